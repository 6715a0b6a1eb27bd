"""Inventory's pure parts: cutting a batch into runs, lot order, stored records, outcome
events."""

from __future__ import annotations

from typing import Any

import orjson

from services.common.consumed import ConsumedEvent
from services.common.events import Envelope, decode, encode
from services.common.messages import (
    LotAllocation,
    Message,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    OrderRejected,
    PickRequested,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationRejected,
    StockChanged,
)
from services.inventory import outcome_events
from services.inventory.domain import Lot, StockLevels, fefo_key, trace_code, trace_key
from services.inventory.handlers import RunHandler, plan_runs
from services.inventory.stock_store import levels_from_redis, record_from_json

KEY = trace_key("unit-test-trace-secret")


def consumed(offset: int, message: Message) -> ConsumedEvent[Message]:
    """An event as the runner hands it over."""
    return ConsumedEvent(
        topic="lc.orders",
        partition=0,
        offset=offset,
        key=None,
        envelope=Envelope.of(message, source="test"),
        timestamp_ms=0,
    )


def placed(sku: str, order_id: str) -> OrderPlaced:
    return OrderPlaced(order_id, "s", sku, "b", 1, 100, 100, 2, "2026-11-28T12:00:00.000Z")


def test_plan_runs_keeps_offset_order_per_sku_and_joins_consecutive_events_of_a_class() -> None:
    async def place(*_: Any) -> None: ...
    async def pay(*_: Any) -> None: ...
    async def cancel(*_: Any) -> None: ...

    table: dict[type[Message], RunHandler] = {
        OrderPlaced: place,
        OrderPaid: pay,
        OrderCancelled: cancel,
    }
    events = [
        consumed(0, placed("crab", "o1")),
        consumed(1, placed("tea", "o2")),
        # Not in the table: left out, so it does not split the run around it.
        consumed(2, OrderRejected("o3", "s", "crab", "b", 1, "sold_out")),
        consumed(3, placed("crab", "o4")),
        consumed(4, OrderPaid("o1", "s", "crab", "b", 1, "pay-1", 100)),
        consumed(5, placed("crab", "o5")),
        consumed(6, OrderCancelled("o2", "s", "tea", "b", 1)),
    ]
    plan = plan_runs(events, table)

    def shape(sku: str) -> list[tuple[Any, list[int]]]:
        return [(run.handler, [e.offset for e in run.events]) for run in plan[sku]]

    assert list(plan) == ["crab", "tea"]
    assert shape("crab") == [(place, [0, 3]), (pay, [4]), (place, [5])]
    assert shape("tea") == [(place, [1]), (cancel, [6])]
    assert plan_runs([events[2]], table) == {}


def test_fefo_puts_the_earliest_expiry_first_and_lots_without_expiry_last() -> None:
    lots = [
        Lot("Z", "wh-1", 1, 0, None, None),
        Lot("B", "wh-2", 1, 0, "2026-12-05", None),
        Lot("A", "wh-1", 1, 0, None, None),
        Lot("C", "wh-1", 1, 0, "2026-12-05", None),
        Lot("D", "wh-3", 1, 0, "2026-11-30", None),
    ]
    assert [lot.lot_code for lot in sorted(lots, key=fefo_key)] == ["D", "B", "C", "A", "Z"]


def test_stock_levels_invariant() -> None:
    assert StockLevels(10, 3, 5, 2).consistent
    assert not StockLevels(10, 3, 5, 3).consistent
    assert not StockLevels(0, -1, 1, 0).consistent
    assert levels_from_redis([b"4", None, b"1", b"3", None]) == StockLevels(4, 0, 1, 3)
    assert levels_from_redis([b"4", b"0", b"1", b"3", b"7"]).version == 7


# What the Lua scripts store (cjson): total_cents travels as a string so large sums
# keep every digit; the deadline as a number.
COMMITTED = orjson.dumps(
    {
        "s": "committed",
        "b": "b1",
        "q": 3,
        "sid": "s-1",
        "t": "14700",
        "x": 1_800_000_060_000,
        "pr": "pay-1",
        "ca": 1_800_000_001_000,
        "a": [
            {"lot_code": "L1", "warehouse_id": "wh-1", "quantity": 2, "expires_on": "2026-12-01"},
            {"lot_code": "L2", "warehouse_id": "wh-2", "quantity": 1, "expires_on": ""},
        ],
    }
)


def test_outcome_events_are_valid_and_keep_their_ids_when_rebuilt() -> None:
    record = record_from_json("o1", COMMITTED)
    assert record.state == "committed" and record.confirmed
    assert record.allocations[1].expires_on is None

    built = [
        outcome_events.reservation_decided("crab", record, "inv-1"),
        outcome_events.reservation_committed("crab", record, "inv-1"),
        *(
            outcome_events.pick_requested("crab", record, a, "inv-1", trace_key=KEY)
            for a in record.allocations
        ),
        outcome_events.reservation_released("crab", record, "inv-1"),
        outcome_events.reservation_expired("crab", record, "inv-1"),
        outcome_events.stock_changed("crab", StockLevels(5, 1, 1, 3, version=42), "inv-1"),
    ]
    # decode() validates against schemas/events: a field out of contract fails here.
    received = [decode(encode(envelope)) for envelope in built]
    wire = [event.message for event in received]
    confirmed, committed, pick_1, pick_2 = wire[:4]
    assert isinstance(confirmed, ReservationConfirmed)
    assert confirmed.expires_at == "2027-01-15T08:01:00.000Z"
    assert confirmed.total_cents == 14700
    assert isinstance(committed, ReservationCommitted)
    assert committed.allocations == (
        LotAllocation("L1", "wh-1", 2),
        LotAllocation("L2", "wh-2", 1),
    )
    assert isinstance(pick_1, PickRequested) and isinstance(pick_2, PickRequested)
    assert (pick_1.lot_code, pick_1.expires_on) == ("L1", "2026-12-01")
    assert pick_2.expires_on is None
    assert pick_1.pick_id == outcome_events.pick_id("o1", "L1") != pick_2.pick_id
    # One trace code per task, derived from its pick_id.
    assert pick_1.trace_code == trace_code(KEY, pick_1.pick_id)
    assert pick_2.trace_code == trace_code(KEY, pick_2.pick_id) != pick_1.trace_code
    # The stock snapshot carries the version it was read with (consumers order by it).
    assert wire[-1] == StockChanged("crab", 5, 1, 1, 3, version=42)

    rebuilt = [
        outcome_events.reservation_decided("crab", record, "inv-2"),
        outcome_events.reservation_committed("crab", record, "inv-2"),
        outcome_events.pick_requested(
            "crab", record, record.allocations[0], "inv-2", trace_key=KEY
        ),
    ]
    assert [e.event_id for e in rebuilt] == [e.event_id for e in built[:3]]
    assert [e.message for e in rebuilt] == [e.message for e in built[:3]]
    # stock.changed is a snapshot: each one is new.
    assert (
        outcome_events.stock_changed("crab", StockLevels(5, 1, 1, 3), "x").event_id
        != received[-1].event_id
    )


def test_a_rejected_record_becomes_reservation_rejected_with_its_reason() -> None:
    raw = orjson.dumps(
        {"s": "rejected", "b": "b2", "q": 1, "sid": "s-1", "t": "4900", "r": "sold_out"}
    )
    record = record_from_json("o2", raw)
    event = decode(encode(outcome_events.reservation_decided("tea", record, "inv-1")))
    assert event.message == ReservationRejected("o2", "s-1", "tea", "b2", 1, "sold_out")
    assert not record.confirmed and record.expires_ms is None
