"""What inventory decides about, as plain values: no I/O here.

The decisions themselves run in Redis Lua (atomicity across consumers); this module holds
the shapes the scripts read and write, the lot order they allocate in, and how a consumed
partition batch is cut into script calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson

from services.common.event_types import RejectReason
from services.common.kafka_consumer import ConsumedEvent

# The state an order has in inventory's eyes. `unknown`: no order.placed was decided.
OrderState = Literal["reserved", "rejected", "committed", "released", "expired"]
HoldStatus = Literal["reserved", "rejected", "committed", "released", "expired", "unknown"]
LotUpsertStatus = Literal["created", "updated", "conflict"]


@dataclass(frozen=True, slots=True)
class StockLevels:
    received: int
    available: int
    reserved: int
    sold: int
    # Bumped by every script that changes the counters, in the same atomic step: a
    # stock.changed carries it so consumers keep the newest state whatever order the
    # snapshots of several publishers arrive in. 0 before the first change.
    version: int = 0

    @classmethod
    def from_redis(cls, values: Sequence[Any]) -> StockLevels:
        """From HMGET received available reserved sold v (a missing field reads 0)."""
        received, available, reserved, sold, version = (
            int(v) if v is not None else 0 for v in values
        )
        return cls(
            received=received, available=available, reserved=reserved, sold=sold, version=version
        )

    @property
    def consistent(self) -> bool:
        """The stock invariant: every received unit is in exactly one bucket."""
        parts = (self.available, self.reserved, self.sold)
        return min(parts) >= 0 and sum(parts) == self.received


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """An order.placed event as reserve_batch.lua takes it."""

    offset: int
    order_id: str
    buyer_id: str
    quantity: int
    per_user_limit: int
    session_id: str
    total_cents: int

    @classmethod
    def from_event(cls, event: ConsumedEvent) -> PlacedOrder:
        data = event.envelope.data
        return cls(
            offset=event.offset,
            order_id=data["order_id"],
            buyer_id=data["buyer_id"],
            quantity=data["quantity"],
            per_user_limit=data["per_user_limit"],
            session_id=data["session_id"],
            total_cents=data["total_cents"],
        )


@dataclass(frozen=True, slots=True)
class Allocation:
    lot_code: str
    warehouse_id: str
    quantity: int
    expires_on: str | None


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """What Redis keeps per order of a sku: the reservation decision (kept for replays)
    and the order's current state, with what the outcome events need to be rebuilt
    identically (session, buyer, units, total, deadline, allocations, payment)."""

    order_id: str
    state: OrderState
    session_id: str
    buyer_id: str
    quantity: int
    total_cents: int
    reason: RejectReason | None
    expires_ms: int | None
    allocations: tuple[Allocation, ...] = ()
    payment_ref: str | None = None
    committed_ms: int | None = None

    @classmethod
    def from_json(cls, order_id: str, raw: bytes | str) -> OrderRecord:
        # Field names are short because every record is written by Lua (cjson) and read
        # back on every replay; see reserve_batch.lua and commit.lua.
        doc: dict[str, Any] = orjson.loads(raw)
        allocations = doc.get("a") or []
        return cls(
            order_id=order_id,
            state=cast(OrderState, doc["s"]),
            session_id=str(doc["sid"]),
            buyer_id=str(doc["b"]),
            quantity=int(doc["q"]),
            total_cents=int(doc["t"]),
            reason=cast(RejectReason | None, doc.get("r")),
            expires_ms=int(doc["x"]) if "x" in doc else None,
            allocations=tuple(
                Allocation(
                    lot_code=str(a["lot_code"]),
                    warehouse_id=str(a["warehouse_id"]),
                    quantity=int(a["quantity"]),
                    expires_on=a.get("expires_on") or None,
                )
                for a in allocations
            ),
            payment_ref=doc.get("pr"),
            committed_ms=int(doc["ca"]) if "ca" in doc else None,
        )

    @property
    def confirmed(self) -> bool:
        """The reservation decision: held (whatever happened to the hold since) or not."""
        return self.reason is None


@dataclass(frozen=True, slots=True)
class ReservationDecision:
    record: OrderRecord
    offset: int
    # False when reserve_batch returned a decision stored earlier (a replay).
    fresh: bool

    @property
    def outcome(self) -> str:
        return "confirmed" if self.record.reason is None else self.record.reason


@dataclass(frozen=True, slots=True)
class ReserveBatchResult:
    levels: StockLevels
    decisions: list[ReservationDecision]
    # order_ids at offsets applied before but with no stored decision (left untouched).
    skipped: list[str]


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """What commit.lua or release.lua answered for one order."""

    status: HoldStatus
    fresh: bool
    record: OrderRecord | None
    levels: StockLevels


@dataclass(frozen=True, slots=True)
class SweepResult:
    released: int
    holds_left: int
    outbox_len: int
    levels: StockLevels


@dataclass(frozen=True, slots=True)
class LotInput:
    lot_code: str
    warehouse_id: str
    quantity: int
    expires_on: str | None
    origin: str | None


@dataclass(frozen=True, slots=True)
class Lot:
    lot_code: str
    warehouse_id: str
    quantity: int
    allocated: int
    expires_on: str | None
    origin: str | None

    @classmethod
    def from_json(cls, lot_code: str, raw: bytes | str) -> Lot:
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            lot_code=lot_code,
            warehouse_id=str(doc["warehouse_id"]),
            quantity=int(doc["quantity"]),
            allocated=int(doc["allocated"]),
            expires_on=doc.get("expires_on") or None,
            origin=doc.get("origin") or None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "lot_code": self.lot_code,
            "warehouse_id": self.warehouse_id,
            "quantity": self.quantity,
            "allocated": self.allocated,
            "expires_on": self.expires_on,
            "origin": self.origin,
        }


def fefo_key(lot: Lot) -> tuple[bool, str, str]:
    """First-expired-first-out, lots without an expiry date last, ties by lot_code: the
    order commit.lua allocates in (ISO dates sort as text)."""
    return (lot.expires_on is None, lot.expires_on or "", lot.lot_code)


@dataclass(frozen=True, slots=True)
class LotUpsertResult:
    status: LotUpsertStatus
    lot: Lot | None
    detail: str
    levels: StockLevels


@dataclass(frozen=True, slots=True)
class SkuView:
    sku: str
    levels: StockLevels
    lots: list[Lot]


# -- cutting a consumed batch into script calls


@dataclass(frozen=True, slots=True)
class PlaceRun:
    """Consecutive order.placed events of one sku: one reserve_batch call."""

    events: list[ConsumedEvent]


@dataclass(frozen=True, slots=True)
class Payment:
    event: ConsumedEvent


@dataclass(frozen=True, slots=True)
class Cancellation:
    event: ConsumedEvent


Step = PlaceRun | Payment | Cancellation


# What inventory acts on from the orders topic (order.rejected was refused before it).
HANDLED_EVENTS = frozenset({"order.placed", "order.paid", "order.cancelled"})


def plan_batch(events: Sequence[ConsumedEvent]) -> dict[str, list[Step]]:
    """The steps per sku, in offset order within each sku.

    Skus are independent (own keys, own slot), so their steps may run concurrently; within
    a sku the order is kept, because a payment must see the hold its order.placed made.
    Events inventory does not act on (order.rejected: refused before it got here) are left
    out, which lets the order.placed around them form one run.
    """
    plan: dict[str, list[Step]] = {}
    for event in events:
        kind = event.envelope.type
        if kind not in HANDLED_EVENTS:
            continue
        steps = plan.setdefault(event.envelope.data["sku"], [])
        if kind == "order.placed":
            if steps and isinstance(steps[-1], PlaceRun):
                steps[-1].events.append(event)
            else:
                steps.append(PlaceRun([event]))
        elif kind == "order.paid":
            steps.append(Payment(event))
        else:
            steps.append(Cancellation(event))
    return plan
