"""One typed message class per event type and version: what publishers build and what
consumer handlers receive.

`schemas/events/<type>.v<version>.json` is the wire contract; tests/unit/test_messages.py
holds these classes and those files together (same fields, same required set, every
class's encoded sample valid), so neither can drift without a failing test. The codec in
`services.common.events` validates incoming data against the schema and then builds the
class registered for its `(type, version)` in `MESSAGE_TYPES`.

The classes are value classes (`services.common.values`: frozen to mypy, slotted
dataclasses at run time), which orjson serializes natively: encoding an event costs no
intermediate dict.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, Literal, Self, TypedDict

from services.common.values import value_class

RejectReason = Literal["sold_out", "limit_exceeded", "not_on_sale"]
SessionStatus = Literal["scheduled", "live", "ended"]


@value_class
class Message:
    """Base of every event's data. `TYPE` and `VERSION` name it on the wire."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Self:
        """From the `data` of a validated envelope (the schema allows no other fields)."""
        return cls(**data)

    def to_data(self) -> object:
        """What goes into the envelope's `data` (the dataclass itself: orjson writes it)."""
        return self


@value_class
class OrderMessage(Message):
    """An event about one order: these five fields lead every one of them."""

    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int


class OrderFacts(TypedDict):
    """The fields every OrderMessage leads with, to build one from: `OrderPaid(**facts,
    payment_ref=...)`."""

    order_id: str
    session_id: str
    sku: str
    buyer_id: str
    quantity: int


@value_class
class OrderPlaced(OrderMessage):
    TYPE: ClassVar[str] = "order.placed"
    VERSION: ClassVar[int] = 1

    unit_price_cents: int
    total_cents: int
    per_user_limit: int
    placed_at: str


@value_class
class OrderRejected(OrderMessage):
    """An attempt refused by live_orders itself (sold-out fast path, not on sale): it never
    reaches inventory, but hosts count it as an attempt. No longer published (refusals are
    counted in `AttemptsTallied` batches); consumers still accept the ones in the log."""

    TYPE: ClassVar[str] = "order.rejected"
    VERSION: ClassVar[int] = 1

    reason: RejectReason


@value_class
class AttemptsTallied(Message):
    """Attempts live_orders refused itself (sold-out fast path, not on sale), counted in a
    batch: one event per session per batch instead of one `order.rejected` per attempt.
    Every refused order is in exactly one tally (`tally_id` names it: republished after a
    crash, it is the same tally), so hosts count each attempt once."""

    TYPE: ClassVar[str] = "attempts.tallied"
    VERSION: ClassVar[int] = 1

    tally_id: str
    session_id: str
    sold_out: int
    not_on_sale: int
    tallied_at: str

    @property
    def attempts(self) -> int:
        return self.sold_out + self.not_on_sale


@value_class
class OrderPaid(OrderMessage):
    TYPE: ClassVar[str] = "order.paid"
    VERSION: ClassVar[int] = 1

    payment_ref: str
    amount_cents: int


@value_class
class OrderCancelled(OrderMessage):
    TYPE: ClassVar[str] = "order.cancelled"
    VERSION: ClassVar[int] = 1


@value_class
class ReservationConfirmed(OrderMessage):
    TYPE: ClassVar[str] = "reservation.confirmed"
    VERSION: ClassVar[int] = 1

    total_cents: int
    expires_at: str


@value_class
class ReservationRejected(OrderMessage):
    TYPE: ClassVar[str] = "reservation.rejected"
    VERSION: ClassVar[int] = 1

    reason: RejectReason


@value_class
class LotAllocation:
    lot_code: str
    warehouse_id: str
    quantity: int


@value_class
class ReservationCommitted(OrderMessage):
    TYPE: ClassVar[str] = "reservation.committed"
    VERSION: ClassVar[int] = 1

    total_cents: int
    payment_ref: str
    allocations: tuple[LotAllocation, ...]

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Self:
        allocations = tuple(LotAllocation(**a) for a in data["allocations"])
        return cls(**{**data, "allocations": allocations})


@value_class
class ReservationReleased(OrderMessage):
    """Units of a cancelled order given back to the pool."""

    TYPE: ClassVar[str] = "reservation.released"
    VERSION: ClassVar[int] = 1


@value_class
class ReservationExpired(OrderMessage):
    """Units of a hold whose payment deadline passed, given back to the pool."""

    TYPE: ClassVar[str] = "reservation.expired"
    VERSION: ClassVar[int] = 1


@value_class
class StockChanged(Message):
    TYPE: ClassVar[str] = "stock.changed"
    VERSION: ClassVar[int] = 1

    sku: str
    received: int
    available: int
    reserved: int
    sold: int
    # Per-sku version of these counters (higher is newer); None in events from before it
    # existed (the field is absent on the wire), which consumers must still accept.
    version: int | None = None

    def to_data(self) -> object:
        if self.version is not None:
            return self
        return _without(self, "version")


@value_class
class PickRequested(Message):
    TYPE: ClassVar[str] = "pick.requested"
    VERSION: ClassVar[int] = 1

    pick_id: str
    order_id: str
    session_id: str
    sku: str
    warehouse_id: str
    lot_code: str
    quantity: int
    expires_on: str | None
    created_at: str
    # The code printed on the box label (GET /v1/trace/{trace_code}); None in events from
    # before traceability (absent on the wire).
    trace_code: str | None = None

    def to_data(self) -> object:
        if self.trace_code is not None:
            return self
        return _without(self, "trace_code")


@value_class
class PickCompleted(Message):
    """A pick task done by warehouse staff (published once, by the notifier)."""

    TYPE: ClassVar[str] = "pick.completed"
    VERSION: ClassVar[int] = 1

    pick_id: str
    order_id: str
    sku: str
    warehouse_id: str
    lot_code: str
    quantity: int
    trace_code: str | None
    completed_at: str
    completed_by: str


@value_class
class LotUpdated(Message):
    """A lot as it is after its journal grew (a receipt, an allocation, a completed pick);
    `journal_seq` orders the versions of one lot."""

    TYPE: ClassVar[str] = "lot.updated"
    VERSION: ClassVar[int] = 1

    sku: str
    lot_code: str
    warehouse_id: str
    quantity: int
    allocated: int
    expires_on: str | None
    origin: str | None
    producer: str | None
    harvested_on: str | None
    inspection: str | None
    journal_seq: int
    journal_head: str


@value_class
class Listing:
    sku: str
    title: str
    price_cents: int
    per_user_limit: int
    sale_starts_at: str | None
    sale_ends_at: str | None


@value_class
class SessionUpdated(Message):
    TYPE: ClassVar[str] = "session.updated"
    VERSION: ClassVar[int] = 1

    session_id: str
    host_id: str
    title: str
    status: SessionStatus
    listings: tuple[Listing, ...]
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    # Optional (absent in events from before pavilions): the promotion pavilion.
    pavilion: str | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Self:
        listings = tuple(Listing(**item) for item in data["listings"])
        return cls(**{**data, "listings": listings})


@value_class
class EventDeadLettered(Message):
    """What a consumer could not decode or validate, kept whole for an engineer to read."""

    TYPE: ClassVar[str] = "event.dead_lettered"
    VERSION: ClassVar[int] = 1

    reason: str
    topic: str
    partition: int
    offset: int
    consumer_group: str
    key_b64: str | None
    value_b64: str


OrderOutcome = (
    ReservationConfirmed
    | ReservationRejected
    | ReservationCommitted
    | ReservationReleased
    | ReservationExpired
)

ALL_MESSAGES: tuple[type[Message], ...] = (
    OrderPlaced,
    OrderRejected,
    AttemptsTallied,
    OrderPaid,
    OrderCancelled,
    ReservationConfirmed,
    ReservationRejected,
    ReservationCommitted,
    ReservationReleased,
    ReservationExpired,
    StockChanged,
    PickRequested,
    PickCompleted,
    LotUpdated,
    SessionUpdated,
    EventDeadLettered,
)

# (type, version) -> message class. The codec refuses anything not listed here.
MESSAGE_TYPES: dict[tuple[str, int], type[Message]] = {
    (cls.TYPE, cls.VERSION): cls for cls in ALL_MESSAGES
}


def _without(message: Message, absent: str) -> dict[str, Any]:
    """The message's data without an optional field that older events lack."""
    return {f.name: getattr(message, f.name) for f in fields(message) if f.name != absent}
