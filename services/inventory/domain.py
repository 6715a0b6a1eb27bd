"""What inventory decides about, as plain values: no I/O here.

The decisions themselves run in Redis Lua (atomicity across consumers); this module holds
the shapes the scripts read and write and the lot order they allocate in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.common.messages import OrderPlaced, RejectReason

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
    def from_message(cls, offset: int, placed: OrderPlaced) -> PlacedOrder:
        return cls(
            offset=offset,
            order_id=placed.order_id,
            buyer_id=placed.buyer_id,
            quantity=placed.quantity,
            per_user_limit=placed.per_user_limit,
            session_id=placed.session_id,
            total_cents=placed.total_cents,
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
