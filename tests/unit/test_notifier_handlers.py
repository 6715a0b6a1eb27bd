"""The notifier's consumer handlers against an in-memory projection and pick queue."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from services.common.consumed import ConsumedEvent
from services.common.messages import (
    EventDeadLettered,
    Listing,
    LotUpdated,
    Message,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    PickCompleted,
    PickRequested,
    ReservationConfirmed,
    ReservationRejected,
    SessionUpdated,
    StockChanged,
)
from services.notifier.handlers import EventHandlers
from services.notifier.metrics import NotifierMetrics
from services.notifier.projection import effect_of
from services.notifier.redis_keys import NotifierKeys
from tests.unit.fakes import FakePickQueue, FakeProjection, consumed

KEYS = NotifierKeys("lc:")

PLACED = OrderPlaced("o1", "s1", "crab", "b1", 2, 1500, 3000, 4, "2030-05-01T12:00:00.000Z")
CONFIRMED = ReservationConfirmed("o1", "s1", "crab", "b1", 2, 3000, "2030-05-01T12:15:00.000Z")
REJECTED = ReservationRejected("o2", "s1", "crab", "b2", 1, "sold_out")
STOCK = StockChanged("crab", 10, 8, 2, 0, version=3)
SESSION = SessionUpdated(
    "s1",
    "host-1",
    "Crabs at dawn",
    "live",
    (Listing("crab", "Hairy crab", 1500, 4, None, None),),
    "2030-05-01T11:00:00.000Z",
)
PAID = OrderPaid("o1", "s1", "crab", "b1", 2, "p1", 3000)
CANCELLED = OrderCancelled("o3", "s1", "crab", "b3", 1)
LOT = LotUpdated("crab", "L-1", "wh-1", 10, 2, None, "Lake", None, None, None, 3, "c" * 64)
DONE = PickCompleted("pk-1", "o1", "crab", "wh-1", "L-1", 2, None, "2030-05-01T13:00:00Z", "st")
DEAD = EventDeadLettered("not JSON", "lc.orders", 0, 7, "lc.inventory", None, "eA==")


def pick(pick_id: str, warehouse_id: str = "wh-1") -> PickRequested:
    return PickRequested(
        pick_id=pick_id,
        order_id="o1",
        session_id="s1",
        sku="crab",
        warehouse_id=warehouse_id,
        lot_code="lot-1",
        quantity=2,
        expires_on=None,
        created_at="2030-05-01T12:05:00.000Z",
    )


def batch(topic: str, partition: int, *messages: Message) -> list[ConsumedEvent[Message]]:
    return [
        consumed(message, offset, topic=topic, partition=partition)
        for offset, message in enumerate(messages)
    ]


@dataclass
class Notifier:
    registry: CollectorRegistry
    projection: FakeProjection
    picks: FakePickQueue
    handlers: EventHandlers

    def metric(self, name: str, topic: str) -> float:
        return self.registry.get_sample_value(name, {"topic": topic}) or 0.0


@pytest.fixture
def notifier() -> Notifier:
    registry = CollectorRegistry()
    projection = FakeProjection()
    picks = FakePickQueue()
    handlers = EventHandlers(
        keys=KEYS, projection=projection, picks=picks, metrics=NotifierMetrics.create(registry)
    )
    return Notifier(registry, projection, picks, handlers)


async def test_projected_events_reach_the_projection_in_one_apply(notifier: Notifier) -> None:
    events = batch("lc.inventory", 2, PLACED, CONFIRMED, REJECTED, STOCK, SESSION)

    await notifier.handlers(events)

    # order.placed is not the notifier's (its decision counts the attempt): not decoded,
    # not dispatched.
    assert OrderPlaced not in notifier.handlers.handles
    expected = [effect_of(e.message, e.offset, KEYS) for e in events[1:]]
    assert notifier.projection.calls == [("lc.inventory:2", expected)]
    assert notifier.picks.calls == []


async def test_pick_requested_goes_to_the_pick_queue(notifier: Notifier) -> None:
    first, second = pick("pk-1"), pick("pk-2", "wh-2")

    await notifier.handlers(batch("lc.picks", 1, first, second))

    assert notifier.picks.calls == [("lc.picks:1", [(0, first), (1, second)])]
    assert set(notifier.picks.open) == {"pk-1", "pk-2"}
    assert notifier.projection.calls == []


async def test_classes_not_in_the_table_are_passed_over(notifier: Notifier) -> None:
    await notifier.handlers(batch("lc.orders", 0, PAID, CANCELLED, DEAD))

    assert notifier.projection.calls == []
    assert notifier.picks.calls == []


async def test_a_mixed_batch_goes_to_each_handler_in_offset_order(notifier: Notifier) -> None:
    task = pick("pk-1")

    await notifier.handlers(batch("lc.orders", 0, CONFIRMED, task, PAID, REJECTED))

    ((_, effects),) = notifier.projection.calls
    assert [effect.offset for effect in effects] == [0, 3]
    assert notifier.picks.calls == [("lc.orders:0", [(1, task)])]


async def test_a_redelivered_batch_is_counted_as_skipped(notifier: Notifier) -> None:
    events = batch("lc.inventory", 0, CONFIRMED, REJECTED, STOCK)
    await notifier.handlers(events)

    await notifier.handlers(events)

    assert notifier.metric("lc_notifier_events_applied_total", "lc.inventory") == 3
    assert notifier.metric("lc_notifier_events_skipped_total", "lc.inventory") == 3


async def test_lot_updates_reach_the_projection_and_completions_are_passed_over(
    notifier: Notifier,
) -> None:
    events = batch("lc.inventory", 0, LOT, DONE)

    await notifier.handlers(events)

    assert notifier.projection.calls == [("lc.inventory:0", [effect_of(LOT, 0, KEYS)])]
    assert notifier.picks.calls == []
    assert LotUpdated in notifier.handlers.handles
    assert PickCompleted not in notifier.handlers.handles
