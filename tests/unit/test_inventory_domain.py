"""Inventory's pure parts: batch planning, lot order, stored records, outcome events."""

from __future__ import annotations

from typing import Any

import orjson

from services.common.events import Envelope, decode, encode
from services.common.kafka_consumer import ConsumedEvent
from services.inventory import outcomes
from services.inventory.domain import (
    Cancellation,
    Lot,
    OrderRecord,
    Payment,
    PlaceRun,
    StockLevels,
    fefo_key,
    plan_batch,
)


def consumed(offset: int, type_: str, sku: str, order_id: str) -> ConsumedEvent:
    data: dict[str, Any] = {"order_id": order_id, "sku": sku}
    return ConsumedEvent(
        topic="lc.orders",
        partition=0,
        offset=offset,
        key=sku,
        envelope=Envelope(type=type_, data=data, source="test"),
        timestamp_ms=0,
    )


def test_plan_batch_keeps_offset_order_per_sku_and_runs_consecutive_placements() -> None:
    events = [
        consumed(0, "order.placed", "crab", "o1"),
        consumed(1, "order.placed", "tea", "o2"),
        consumed(2, "order.rejected", "crab", "o3"),  # ignored: does not split the run
        consumed(3, "order.placed", "crab", "o4"),
        consumed(4, "order.paid", "crab", "o1"),
        consumed(5, "order.placed", "crab", "o5"),
        consumed(6, "order.cancelled", "tea", "o2"),
        consumed(7, "session.updated", "crab", "x"),
    ]
    plan = plan_batch(events)

    def shape(steps: list[Any]) -> list[tuple[str, list[int]]]:
        out = []
        for step in steps:
            if isinstance(step, PlaceRun):
                out.append(("place", [e.offset for e in step.events]))
            elif isinstance(step, Payment):
                out.append(("pay", [step.event.offset]))
            else:
                assert isinstance(step, Cancellation)
                out.append(("cancel", [step.event.offset]))
        return out

    assert list(plan) == ["crab", "tea"]
    assert shape(plan["crab"]) == [("place", [0, 3]), ("pay", [4]), ("place", [5])]
    assert shape(plan["tea"]) == [("place", [1]), ("cancel", [6])]
    assert plan_batch([consumed(0, "order.rejected", "crab", "o")]) == {}


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
    assert StockLevels.from_redis([b"4", None, b"1", b"3", None]) == StockLevels(4, 0, 1, 3)
    assert StockLevels.from_redis([b"4", b"0", b"1", b"3", b"7"]).version == 7


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
    record = OrderRecord.from_json("o1", COMMITTED)
    assert record.state == "committed" and record.confirmed
    assert record.allocations[1].expires_on is None

    built = [
        outcomes.reservation_decided("crab", record, "inv-1"),
        outcomes.reservation_committed("crab", record, "inv-1"),
        *(outcomes.pick_requested("crab", record, a, "inv-1") for a in record.allocations),
        outcomes.reservation_released("crab", record, "inv-1"),
        outcomes.reservation_expired("crab", record, "inv-1"),
        outcomes.stock_changed("crab", StockLevels(5, 1, 1, 3, version=42), "inv-1"),
    ]
    # encode() validates against schemas/events: a field out of contract fails here.
    wire = [decode(encode(envelope)) for envelope in built]
    confirmed, committed, pick_1, pick_2 = wire[:4]
    assert confirmed.type == "reservation.confirmed"
    assert confirmed.data["expires_at"] == "2027-01-15T08:01:00.000Z"
    assert confirmed.data["total_cents"] == 14700
    assert committed.data["allocations"] == [
        {"lot_code": "L1", "warehouse_id": "wh-1", "quantity": 2},
        {"lot_code": "L2", "warehouse_id": "wh-2", "quantity": 1},
    ]
    assert (pick_1.data["lot_code"], pick_1.data["expires_on"]) == ("L1", "2026-12-01")
    assert pick_2.data["expires_on"] is None
    assert pick_1.data["pick_id"] == outcomes.pick_id("o1", "L1") != pick_2.data["pick_id"]
    # The stock snapshot carries the version it was read with (consumers order by it).
    assert wire[-1].data == {
        "sku": "crab",
        "received": 5,
        "available": 1,
        "reserved": 1,
        "sold": 3,
        "version": 42,
    }

    rebuilt = [
        outcomes.reservation_decided("crab", record, "inv-2"),
        outcomes.reservation_committed("crab", record, "inv-2"),
        outcomes.pick_requested("crab", record, record.allocations[0], "inv-2"),
    ]
    assert [e.event_id for e in rebuilt] == [e.event_id for e in built[:3]]
    assert [e.data for e in rebuilt] == [e.data for e in built[:3]]
    # stock.changed is a snapshot: each one is new.
    assert (
        outcomes.stock_changed("crab", StockLevels(5, 1, 1, 3), "x").event_id != wire[-1].event_id
    )


def test_a_rejected_record_becomes_reservation_rejected_with_its_reason() -> None:
    raw = orjson.dumps(
        {"s": "rejected", "b": "b2", "q": 1, "sid": "s-1", "t": "4900", "r": "sold_out"}
    )
    record = OrderRecord.from_json("o2", raw)
    event = decode(encode(outcomes.reservation_decided("tea", record, "inv-1")))
    assert event.type == "reservation.rejected"
    assert event.data["reason"] == "sold_out"
    assert not record.confirmed and record.expires_ms is None
