"""What each consumed event does to the live counters: pure rules, no I/O.

An event becomes an `EventEffect` (`EFFECTS`: message class -> effect): a list of
increments and assignments on named Redis hashes and sorted sets, plus an optional guard.
`projection_store` applies the effects of one partition batch in one Lua call, together
with the consumed offset, so every event counts exactly once however often Kafka
redelivers it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import Any

import orjson

from services.common.messages import (
    AttemptsTallied,
    LotUpdated,
    Message,
    OrderPlaced,
    OrderRejected,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationExpired,
    ReservationRejected,
    ReservationReleased,
    SessionUpdated,
    StockChanged,
)
from services.common.values import value_class
from services.notifier.redis_keys import NotifierKeys
from services.notifier.trace import LotRecord, lot_field

# The host's counters, in the order the contract lists them (DESIGN 4.5).
TOTAL_FIELDS: tuple[str, ...] = (
    "attempts",
    "reserved_orders",
    "rejected_sold_out",
    "rejected_limit",
    "paid_orders",
    "cancelled_orders",
    "expired_orders",
    "units_reserved",
    "units_sold",
    "gmv_cents",
)

STOCK_FIELDS: tuple[str, ...] = ("available", "reserved", "sold")

# A rejection reason -> the counter it lands in (`not_on_sale` only counts as an attempt).
REJECTION_COUNTER: Mapping[str, str] = {
    "sold_out": "rejected_sold_out",
    "limit_exceeded": "rejected_limit",
}


@value_class
class Increment:
    """HINCRBY key field amount."""

    key: str
    field: str
    amount: int


@value_class
class Assign:
    """HSET key field value."""

    key: str
    field: str
    value: str


@value_class
class RankAdd:
    """ZINCRBY key amount member."""

    key: str
    member: str
    amount: int


@value_class
class SetAdd:
    """SADD key member."""

    key: str
    member: str


@value_class
class AssignIfNewer:
    """HSET key field value, unless the hash `versions` holds a version for `field` at or
    above `version`; a newer version is recorded there too.

    For snapshots that supersede each other (stock.changed): several inventory processes
    publish them, and Kafka may hold them in another order than the states they read, so
    the offset alone would let an older state overwrite a newer one. `version` None (an
    event from before versions existed) applies only while no versioned snapshot was
    stored for the field: it cannot be ordered against one, and the versioned publishers
    are the current ones, so their next snapshot is the one to trust."""

    key: str
    field: str
    value: str
    versions: str
    version: int | None


@value_class
class IncrementOnce:
    """HINCRBY key field amount, only if `member` is new in the set `seen` (then added
    there): a count that more than one event may carry, made by whichever comes first
    (see `_attempt`)."""

    key: str
    field: str
    amount: int
    seen: str
    member: str


@value_class
class KeepForTrace:
    """ZADD key GT <now + the trace retention> member: `key` is the companion sorted set
    (member -> epoch ms it may go) of a hash whose field `member` the retention sweep drops
    then (Redis 7.0 has no per-field expiry). The store supplies the time."""

    key: str
    member: str


Op = Increment | Assign | RankAdd | AssignIfNewer | SetAdd | KeepForTrace | IncrementOnce


@value_class
class Guard:
    """Apply the effect only if `member` is new in the set `key` (then add it)."""

    key: str
    member: str


@value_class
class EventEffect:
    offset: int
    guard: Guard | None = None
    ops: tuple[Op, ...] = field(default_factory=tuple)


OrderEvent = (
    OrderRejected
    | ReservationConfirmed
    | ReservationRejected
    | ReservationCommitted
    | ReservationReleased
    | ReservationExpired
)


def _attempt(event: ReservationConfirmed | ReservationRejected, keys: NotifierKeys) -> Op:
    """An attempt that reached inventory, counted from inventory's decision on it (every
    order.placed gets exactly one: confirmed or rejected), not from the order.placed
    itself: that event is not decoded at all then, one event fewer per order. Guarded by
    the member order.placed:<id> that counting the order.placed used, so an order whose
    order.placed was counted by a notifier from before this rule is not counted again."""
    return IncrementOnce(
        keys.totals(event.session_id),
        "attempts",
        1,
        keys.seen(event.session_id),
        f"{OrderPlaced.TYPE}:{event.order_id}",
    )


def _refused_here(event: OrderRejected, totals: str, keys: NotifierKeys) -> list[Op]:
    ops: list[Op] = [Increment(totals, "attempts", 1)]
    counter = REJECTION_COUNTER.get(event.reason)
    return ops + ([Increment(totals, counter, 1)] if counter else [])


def _rejected(event: ReservationRejected, totals: str, keys: NotifierKeys) -> list[Op]:
    counter = REJECTION_COUNTER.get(event.reason)
    return [_attempt(event, keys)] + ([Increment(totals, counter, 1)] if counter else [])


def _confirmed(event: ReservationConfirmed, totals: str, keys: NotifierKeys) -> list[Op]:
    return [
        _attempt(event, keys),
        Increment(totals, "reserved_orders", 1),
        Increment(totals, "units_reserved", event.quantity),
    ]


def _committed(event: ReservationCommitted, totals: str, keys: NotifierKeys) -> list[Op]:
    return [
        Increment(totals, "paid_orders", 1),
        Increment(totals, "units_reserved", -event.quantity),
        Increment(totals, "units_sold", event.quantity),
        Increment(totals, "gmv_cents", event.total_cents),
        RankAdd(keys.leaderboard, event.session_id, event.total_cents),
        # Who may read the paid order's trace (GET /v1/orders/{order_id}/trace).
        Assign(keys.order_buyers, event.order_id, event.buyer_id),
        KeepForTrace(keys.order_buyers_due, event.order_id),
    ]


def _released(event: ReservationReleased, totals: str, keys: NotifierKeys) -> list[Op]:
    return [
        Increment(totals, "cancelled_orders", 1),
        Increment(totals, "units_reserved", -event.quantity),
    ]


def _expired(event: ReservationExpired, totals: str, keys: NotifierKeys) -> list[Op]:
    return [
        Increment(totals, "expired_orders", 1),
        Increment(totals, "units_reserved", -event.quantity),
    ]


# Events that count against one order, and what each adds to its session's totals. An
# order is reserved, committed, released at most once (DESIGN 3.2), so `type:order_id`
# identifies the effect: an outcome that inventory re-published after a crash, under a
# new offset, is still counted once.
ORDER_EFFECTS: dict[type[Message], Callable[[Any, str, NotifierKeys], list[Op]]] = {
    OrderRejected: _refused_here,
    ReservationRejected: _rejected,
    ReservationConfirmed: _confirmed,
    ReservationCommitted: _committed,
    ReservationReleased: _released,
    ReservationExpired: _expired,
}


def order_effect(event: OrderEvent, offset: int, keys: NotifierKeys) -> EventEffect:
    """An order's event: counted once per (type, order) in its session's totals."""
    session_id = event.session_id
    ops = ORDER_EFFECTS[type(event)](event, keys.totals(session_id), keys)
    return EventEffect(
        offset, Guard(keys.seen(session_id), f"{event.TYPE}:{event.order_id}"), tuple(ops)
    )


def tally_effect(event: AttemptsTallied, offset: int, keys: NotifierKeys) -> EventEffect:
    """Attempts refused by live_orders, counted in a batch: counted once per tally_id (a
    tally republished after a crash carries the same id)."""
    totals = keys.totals(event.session_id)
    ops = [Increment(totals, "attempts", event.attempts)]
    if event.sold_out:
        ops.append(Increment(totals, "rejected_sold_out", event.sold_out))
    return EventEffect(
        offset, Guard(keys.seen(event.session_id), f"{event.TYPE}:{event.tally_id}"), tuple(ops)
    )


def stock_effect(event: StockChanged, offset: int, keys: NotifierKeys) -> EventEffect:
    """A stock snapshot: kept unless a newer version of the sku's was stored."""
    state = [event.received, event.available, event.reserved, event.sold]
    assign = AssignIfNewer(keys.stock, event.sku, _json(state), keys.stock_versions, event.version)
    return EventEffect(offset, None, (assign,))


def session_effect(event: SessionUpdated, offset: int, keys: NotifierKeys) -> EventEffect:
    """A session's latest state (the topic is compacted: the last one is the truth)."""
    session_key = keys.session(event.session_id)
    listings = [
        {"sku": item.sku, "title": item.title, "price_cents": item.price_cents}
        for item in event.listings
    ]
    ops: list[Op] = [
        Assign(session_key, "host_id", event.host_id),
        Assign(session_key, "title", event.title),
        Assign(session_key, "status", event.status),
        Assign(session_key, "listings", _json(listings)),
        Assign(session_key, "pavilion", event.pavilion or ""),
    ]
    if event.pavilion:
        # A session's pavilion is set at creation and never changes: adding is enough.
        ops.append(SetAdd(keys.pavilion(event.pavilion), event.session_id))
    return EventEffect(offset, None, tuple(ops))


def lot_effect(event: LotUpdated, offset: int, keys: NotifierKeys) -> EventEffect:
    """A lot as its journal left it: kept unless a newer journal_seq of it was stored
    (inventory processes may publish the versions of a lot out of order)."""
    field = lot_field(event.sku, event.lot_code)
    assign = AssignIfNewer(
        keys.lots, field, LotRecord.of(event).to_json(), keys.lot_versions, event.journal_seq
    )
    return EventEffect(offset, None, (assign,))


@value_class
class Applied:
    """What the projection store did with a batch's effects."""

    applied: int
    skipped: int


# What each event the projection watches does to it.
EFFECTS: dict[type[Message], Callable[[Any, int, NotifierKeys], EventEffect]] = {
    **{order_event: order_effect for order_event in ORDER_EFFECTS},
    AttemptsTallied: tally_effect,
    StockChanged: stock_effect,
    SessionUpdated: session_effect,
    LotUpdated: lot_effect,
}


def effect_of(message: Message, offset: int, keys: NotifierKeys) -> EventEffect:
    """The effect of one event on the projection; events it does not watch have none."""
    effect = EFFECTS.get(type(message))
    return effect(message, offset, keys) if effect is not None else EventEffect(offset)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------- reading it back


@value_class
class SessionInfo:
    session_id: str
    host_id: str
    title: str
    status: str
    listings: tuple[Mapping[str, Any], ...]
    pavilion: str | None = None

    @property
    def skus(self) -> list[str]:
        return [str(listing["sku"]) for listing in self.listings]


@value_class
class SkuStock:
    """A SKU's counters as the newest stock.changed left them."""

    received: int
    available: int
    reserved: int
    sold: int


def session_payload(
    session: SessionInfo, totals: dict[str, int], stock: Mapping[str, SkuStock | None]
) -> dict[str, Any]:
    """Everything of a snapshot but `type`, `seq` and `at` (those are the push's). SKUs
    with no stock.changed yet are left out of `skus`."""
    skus: dict[str, dict[str, int]] = {}
    received: dict[str, int] = {}
    for sku in session.skus:
        state = stock.get(sku)
        if state is not None:
            skus[sku] = {
                "available": state.available,
                "reserved": state.reserved,
                "sold": state.sold,
            }
            received[sku] = state.received
    return {
        "session_id": session.session_id,
        "totals": totals,
        "skus": skus,
        # Additive, optional: what the dashboard shows beside the contract's fields.
        "session": {"title": session.title, "status": session.status},
        "listings": [
            {
                "sku": listing["sku"],
                "title": listing["title"],
                "price_cents": listing["price_cents"],
                "received": received.get(str(listing["sku"])),
            }
            for listing in session.listings
        ],
    }


# The statuses `GET /v1/pavilions/{pavilion}/sessions?status=...` lists: by default the
# sessions a viewer can still join; ended ones only when asked for.
PAVILION_STATUS_FILTERS: Mapping[str, frozenset[str]] = {
    "current": frozenset({"live", "scheduled"}),
    "live": frozenset({"live"}),
    "scheduled": frozenset({"scheduled"}),
    "ended": frozenset({"ended"}),
    "all": frozenset({"live", "scheduled", "ended"}),
}
MAX_PAVILION_LENGTH = 100
_STATUS_ORDER = {"live": 0, "scheduled": 1, "ended": 2}


def check_pavilion(pavilion: str) -> str:
    """A pavilion name as sessions accept it (1..100 characters); ValueError otherwise."""
    if not 1 <= len(pavilion) <= MAX_PAVILION_LENGTH:
        raise ValueError(f"a pavilion has 1 to {MAX_PAVILION_LENGTH} characters")
    return pavilion


def pavilion_statuses(status: str | None) -> frozenset[str]:
    """The statuses `?status=` asks for (none: live and scheduled); ValueError says what
    is wrong."""
    if status is None:
        return PAVILION_STATUS_FILTERS["current"]
    chosen = PAVILION_STATUS_FILTERS.get(status)
    if chosen is None or status == "current":
        raise ValueError("status must be live, scheduled, ended or all")
    return chosen


def pavilion_listing(
    pavilion: str, sessions: Sequence[SessionInfo], statuses: frozenset[str]
) -> dict[str, Any]:
    """The pavilion's sessions of the given statuses: live first, then scheduled, then
    ended; by title within a status."""
    chosen = sorted(
        (s for s in sessions if s.status in statuses),
        key=lambda s: (_STATUS_ORDER.get(s.status, 3), s.title, s.session_id),
    )
    return {
        "pavilion": pavilion,
        "sessions": [
            {
                "session_id": s.session_id,
                "title": s.title,
                "host_id": s.host_id,
                "status": s.status,
            }
            for s in chosen
        ],
    }
