"""What inventory decides about, as plain values: no I/O here.

The decisions themselves run in Redis Lua (atomicity across consumers); this module holds
the shapes the scripts read and write and the lot order they allocate in.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from services.common.messages import OrderPlaced, RejectReason
from services.common.values import value_class

# The state an order has in inventory's eyes. `unknown`: no order.placed was decided.
OrderState = Literal["reserved", "rejected", "committed", "released", "expired"]
HoldStatus = Literal["reserved", "rejected", "committed", "released", "expired", "unknown"]
LotUpsertStatus = Literal["created", "updated", "conflict"]


@value_class
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


@value_class
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


@value_class
class Allocation:
    lot_code: str
    warehouse_id: str
    quantity: int
    expires_on: str | None


@value_class
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


@value_class
class ReservationDecision:
    record: OrderRecord
    offset: int
    # False when reserve_batch returned a decision stored earlier (a replay).
    fresh: bool

    @property
    def outcome(self) -> str:
        return "confirmed" if self.record.reason is None else self.record.reason


@value_class
class ReserveBatchResult:
    levels: StockLevels
    decisions: list[ReservationDecision]
    # order_ids at offsets applied before but with no stored decision (left untouched).
    skipped: list[str]


@value_class
class HoldOutcome:
    """What commit.lua or release.lua answered for one order."""

    status: HoldStatus
    fresh: bool
    record: OrderRecord | None
    levels: StockLevels


@value_class
class SweepResult:
    released: int
    holds_left: int
    outbox_len: int
    levels: StockLevels


@value_class
class LotInput:
    lot_code: str
    warehouse_id: str
    quantity: int
    expires_on: str | None
    origin: str | None
    # Traceability (DESIGN 4.6): who produced it, when (a calendar date), and its
    # certificate or test result.
    producer: str | None = None
    harvested_on: str | None = None
    inspection: str | None = None


@value_class
class Lot:
    lot_code: str
    warehouse_id: str
    quantity: int
    allocated: int
    expires_on: str | None
    origin: str | None
    producer: str | None = None
    harvested_on: str | None = None
    inspection: str | None = None


def fefo_key(lot: Lot) -> tuple[bool, str, str]:
    """First-expired-first-out, lots without an expiry date last, ties by lot_code: the
    order commit.lua allocates in (ISO dates sort as text)."""
    return (lot.expires_on is None, lot.expires_on or "", lot.lot_code)


@value_class
class LotUpsertResult:
    status: LotUpsertStatus
    lot: Lot | None
    detail: str
    levels: StockLevels


@value_class
class SkuView:
    sku: str
    levels: StockLevels
    lots: list[Lot]


# -- trace codes (DESIGN 4.6: printed on the box label, looked up without a token)

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TRACE_CODE_LENGTH = 22  # 62**22 > 2**128: the first 128 bits of the MAC, none lost
# Domain separation: the JWT secret (the fallback) signs tokens with HMAC-SHA256 too; the
# trace key is a MAC of this label under the secret, never the secret itself, so a trace
# code is no HS256 signature of anything and learning codes tells nothing about tokens.
TRACE_KEY_LABEL = b"livecommerce/trace-code/v1"


def trace_key(secret: str) -> bytes:
    """The key of every trace code, from LC_TRACE_SECRET (or, unset, LC_JWT_SECRET)."""
    return hmac.new(secret.encode(), TRACE_KEY_LABEL, hashlib.sha256).digest()


def trace_code(key: bytes, pick_id: str) -> str:
    """The code of one pick task: base62 of HMAC-SHA256(key, pick_id), 22 characters.

    A function of the (deterministic) pick_id, so a task rebuilt on a replay carries the
    same code; unguessable without the key (128 bits), so a label cannot be forged or a
    neighbour's code derived from one's own."""
    mac = hmac.new(key, pick_id.encode(), hashlib.sha256).digest()
    number = int.from_bytes(mac[:16], "big")
    digits: list[str] = []
    for _ in range(TRACE_CODE_LENGTH):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))
