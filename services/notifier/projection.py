"""What each consumed event does to the live counters: pure rules, no I/O.

An event becomes an `EventEffect`: a list of increments and assignments on named Redis
hashes and sorted sets, plus an optional guard. `projection_store` applies the effects of
one partition batch in one Lua call, together with the consumed offset, so every event
counts exactly once however often Kafka redelivers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.notifier.redis_keys import NotifierKeys

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

# Outcome events that count against one order. An order is reserved, committed, released
# at most once (DESIGN 3.2), so `type:order_id` identifies the effect: an outcome that
# inventory re-published after a crash, under a new offset, is still counted once.
ORDER_EVENTS = frozenset(
    {
        "order.placed",
        "order.rejected",
        "reservation.confirmed",
        "reservation.rejected",
        "reservation.committed",
        "reservation.released",
        "reservation.expired",
    }
)


@dataclass(frozen=True, slots=True)
class Increment:
    """HINCRBY key field amount."""

    key: str
    field: str
    amount: int


@dataclass(frozen=True, slots=True)
class Assign:
    """HSET key field value."""

    key: str
    field: str
    value: str


@dataclass(frozen=True, slots=True)
class RankAdd:
    """ZINCRBY key amount member."""

    key: str
    member: str
    amount: int


@dataclass(frozen=True, slots=True)
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


Op = Increment | Assign | RankAdd | AssignIfNewer


@dataclass(frozen=True, slots=True)
class Guard:
    """Apply the effect only if `member` is new in the set `key` (then add it)."""

    key: str
    member: str


@dataclass(frozen=True, slots=True)
class EventEffect:
    offset: int
    guard: Guard | None = None
    ops: tuple[Op, ...] = field(default_factory=tuple)


def effect_of(
    event_type: str, data: Mapping[str, Any], offset: int, keys: NotifierKeys
) -> EventEffect:
    """The effect of one event on the projection; events it does not watch have none."""
    if event_type in ORDER_EVENTS:
        session_id = str(data["session_id"])
        return EventEffect(
            offset=offset,
            guard=Guard(keys.seen(session_id), f"{event_type}:{data['order_id']}"),
            ops=tuple(_order_ops(event_type, data, keys.totals(session_id), keys)),
        )
    if event_type == "stock.changed":
        state = [int(data["received"])] + [int(data[name]) for name in STOCK_FIELDS]
        version = data.get("version")
        assign = AssignIfNewer(
            keys.stock,
            str(data["sku"]),
            _json(state),
            keys.stock_versions,
            int(version) if version is not None else None,
        )
        return EventEffect(offset, None, (assign,))
    if event_type == "session.updated":
        session_key = keys.session(str(data["session_id"]))
        listings = [
            {"sku": item["sku"], "title": item["title"], "price_cents": item["price_cents"]}
            for item in data["listings"]
        ]
        return EventEffect(
            offset,
            None,
            (
                Assign(session_key, "host_id", str(data["host_id"])),
                Assign(session_key, "title", str(data["title"])),
                Assign(session_key, "status", str(data["status"])),
                Assign(session_key, "listings", _json(listings)),
            ),
        )
    return EventEffect(offset)


def _order_ops(
    event_type: str, data: Mapping[str, Any], totals: str, keys: NotifierKeys
) -> list[Op]:
    quantity = int(data["quantity"])
    if event_type == "order.placed":
        return [Increment(totals, "attempts", 1)]
    if event_type == "order.rejected":
        ops: list[Op] = [Increment(totals, "attempts", 1)]
        counter = REJECTION_COUNTER.get(str(data["reason"]))
        return ops + ([Increment(totals, counter, 1)] if counter else [])
    if event_type == "reservation.rejected":
        counter = REJECTION_COUNTER.get(str(data["reason"]))
        return [Increment(totals, counter, 1)] if counter else []
    if event_type == "reservation.confirmed":
        return [
            Increment(totals, "reserved_orders", 1),
            Increment(totals, "units_reserved", quantity),
        ]
    if event_type == "reservation.committed":
        gmv = int(data["total_cents"])
        return [
            Increment(totals, "paid_orders", 1),
            Increment(totals, "units_reserved", -quantity),
            Increment(totals, "units_sold", quantity),
            Increment(totals, "gmv_cents", gmv),
            RankAdd(keys.leaderboard, str(data["session_id"]), gmv),
        ]
    if event_type == "reservation.released":
        return [
            Increment(totals, "cancelled_orders", 1),
            Increment(totals, "units_reserved", -quantity),
        ]
    if event_type == "reservation.expired":
        return [
            Increment(totals, "expired_orders", 1),
            Increment(totals, "units_reserved", -quantity),
        ]
    return []


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------- reading it back


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    host_id: str
    title: str
    status: str
    listings: tuple[Mapping[str, Any], ...]

    @property
    def skus(self) -> list[str]:
        return [str(listing["sku"]) for listing in self.listings]


def session_from_hash(session_id: str, raw: Mapping[bytes, bytes]) -> SessionInfo | None:
    if not raw or b"host_id" not in raw:
        return None
    listings = orjson.loads(raw.get(b"listings", b"[]"))
    return SessionInfo(
        session_id=session_id,
        host_id=raw[b"host_id"].decode(),
        title=raw.get(b"title", b"").decode(),
        status=raw.get(b"status", b"").decode(),
        listings=tuple(listings),
    )


def totals_from_hash(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {name: int(raw.get(name.encode(), 0)) for name in TOTAL_FIELDS}


def stock_from_json(raw: bytes | None) -> dict[str, int] | None:
    """{available, reserved, sold} of a SKU, or None before its first stock.changed."""
    if raw is None:
        return None
    _received, available, reserved, sold = orjson.loads(raw)
    return {"available": available, "reserved": reserved, "sold": sold}


def session_payload(
    session: SessionInfo, totals: dict[str, int], stock: Mapping[str, bytes | None]
) -> dict[str, Any]:
    """Everything of a snapshot but `type`, `seq` and `at` (those are the push's)."""
    skus: dict[str, dict[str, int]] = {}
    received: dict[str, int] = {}
    for sku in session.skus:
        raw = stock.get(sku)
        state = stock_from_json(raw)
        if state is not None and raw is not None:
            skus[sku] = state
            received[sku] = int(orjson.loads(raw)[0])
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
