"""The `data` of every event type, as typed dicts.

`schemas/events/<type>.v<version>.json` is the wire contract; tests/unit/test_event_schemas.py
holds these types and those files together (same fields, same required set), so neither can
drift without a failing test.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

RejectReason = Literal["sold_out", "limit_exceeded", "not_on_sale"]


class OrderPlaced(TypedDict):
    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    unit_price_cents: int
    total_cents: int
    per_user_limit: int
    placed_at: str


class OrderRejected(TypedDict):
    """An attempt refused by live_orders itself (sold-out fast path): it never reaches
    inventory, but hosts count it as an attempt."""

    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    reason: RejectReason


class OrderPaid(TypedDict):
    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    payment_ref: str
    amount_cents: int


class OrderCancelled(TypedDict):
    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int


class ReservationConfirmed(TypedDict):
    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    total_cents: int
    expires_at: str


class ReservationRejected(TypedDict):
    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    reason: RejectReason


class LotAllocation(TypedDict):
    lot_code: str
    warehouse_id: str
    quantity: int


class ReservationCommitted(TypedDict):
    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int
    total_cents: int
    payment_ref: str
    allocations: list[LotAllocation]


class ReservationReleased(TypedDict):
    """Units of a cancelled order given back to the pool."""

    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int


class ReservationExpired(TypedDict):
    """Units of a hold whose payment deadline passed, given back to the pool."""

    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int


class StockChanged(TypedDict):
    sku: str
    received: int
    available: int
    reserved: int
    sold: int
    # Per-sku version of these counters (higher is newer); absent in events from before
    # it existed, so consumers must accept events without it.
    version: NotRequired[int]


class PickRequested(TypedDict):
    pick_id: str
    order_id: str
    session_id: str
    sku: str
    warehouse_id: str
    lot_code: str
    quantity: int
    expires_on: str | None
    created_at: str


class Listing(TypedDict):
    sku: str
    title: str
    price_cents: int
    per_user_limit: int
    sale_starts_at: str | None
    sale_ends_at: str | None


class SessionUpdated(TypedDict):
    session_id: str
    host_id: str
    title: str
    status: Literal["scheduled", "live", "ended"]
    listings: list[Listing]
    created_at: str
    started_at: NotRequired[str | None]
    ended_at: NotRequired[str | None]


class EventDeadLettered(TypedDict):
    """What a consumer could not decode or validate, kept whole for an engineer to read."""

    reason: str
    topic: str
    partition: int
    offset: int
    consumer_group: str
    key_b64: str | None
    value_b64: str


# (type, version) -> data type. The codec refuses anything not listed here.
EVENT_TYPES: dict[tuple[str, int], type] = {
    ("order.placed", 1): OrderPlaced,
    ("order.rejected", 1): OrderRejected,
    ("order.paid", 1): OrderPaid,
    ("order.cancelled", 1): OrderCancelled,
    ("reservation.confirmed", 1): ReservationConfirmed,
    ("reservation.rejected", 1): ReservationRejected,
    ("reservation.committed", 1): ReservationCommitted,
    ("reservation.released", 1): ReservationReleased,
    ("reservation.expired", 1): ReservationExpired,
    ("stock.changed", 1): StockChanged,
    ("pick.requested", 1): PickRequested,
    ("session.updated", 1): SessionUpdated,
    ("event.dead_lettered", 1): EventDeadLettered,
}
