"""live_orders' consumer handlers (inventory's outcomes, stock snapshots) against
in-memory stores and the real waiters."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from services.common.messages import Message, StockChanged
from services.live_orders.handlers import EventHandlers
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_waiters import OrderWaiters
from tests.unit.fakes import (
    FakeOrderRecords,
    FakeSoldOut,
    an_order,
    committed,
    confirmed,
    consumed,
    expired,
    rejected,
)


@dataclass
class LiveOrders:
    registry: CollectorRegistry
    records: FakeOrderRecords
    sold_out: FakeSoldOut
    waiters: OrderWaiters
    handlers: EventHandlers
    next_offset: int = 0

    async def consume(self, *messages: Message) -> None:
        """One partition batch of the inventory topic, at the next offsets."""
        events = []
        for message in messages:
            events.append(consumed(message, self.next_offset, topic="lc.inventory"))
            self.next_offset += 1
        await self.handlers(events)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def live() -> LiveOrders:
    registry = CollectorRegistry()
    metrics = LiveOrdersMetrics.create(registry)
    records = FakeOrderRecords()
    sold_out = FakeSoldOut()
    waiters = OrderWaiters(records.get, metrics)
    handlers = EventHandlers(
        orders=records, sold_out=sold_out, waiters=waiters, metrics=metrics, source="test"
    )
    return LiveOrders(registry, records, sold_out, waiters, handlers)


async def test_an_outcome_moves_the_waiting_request(live: LiveOrders) -> None:
    order = live.records.add(an_order("pending"))
    waiting = asyncio.create_task(
        live.waiters.wait(order.order_id, lambda o: o.status != "pending", 5)
    )
    await asyncio.sleep(0)

    await live.consume(confirmed(order, "2030-05-01T12:15:00.000Z"))

    async with asyncio.timeout(1):
        seen = await waiting
    assert seen is not None
    assert (seen.status, seen.expires_at) == ("reserved", "2030-05-01T12:15:00.000Z")


async def test_a_batch_is_announced_once(live: LiveOrders) -> None:
    first = live.records.add(an_order("pending"))
    second = live.records.add(an_order("pending", buyer_id="buyer-2"))

    await live.consume(confirmed(first), rejected(second, "sold_out"))

    (announcement,) = live.records.announced
    assert [(u.order_id, u.status) for u in announcement] == [
        (first.order_id, "reserved"),
        (second.order_id, "rejected"),
    ]
    assert announcement[1].fields == {"reason": "sold_out"}


async def test_two_outcomes_of_one_order_apply_in_rounds(live: LiveOrders) -> None:
    first = live.records.add(an_order("pending"))
    second = live.records.add(an_order("pending", buyer_id="buyer-2"))

    await live.consume(confirmed(first), confirmed(second), committed(first, "p1"))

    rounds = [[(r.order_id, r.target) for r in call] for call in live.records.transition_calls]
    assert rounds == [
        [(first.order_id, "reserved"), (second.order_id, "reserved")],
        [(first.order_id, "paid")],
    ]
    assert live.records.orders[first.order_id].status == "paid"
    assert live.records.orders[first.order_id].payment_ref == "p1"


async def test_stock_changed_keeps_only_the_newest_per_sku(live: LiveOrders) -> None:
    await live.consume(
        StockChanged("crab", 10, 3, 7, 0, version=5),
        StockChanged("tea", 10, 4, 6, 0, version=2),
        StockChanged("crab", 10, 0, 10, 0, version=6),
    )

    assert sorted(live.sold_out.recorded) == [("crab", True, 2), ("tea", False, 1)]
    assert "crab" in live.sold_out
    assert "tea" not in live.sold_out


async def test_stock_changed_keeps_the_highest_version_of_a_sku(live: LiveOrders) -> None:
    await live.consume(StockChanged("crab", 10, 3, 7, 0, version=4))

    await live.consume(
        StockChanged("crab", 10, 0, 10, 0, version=6),
        StockChanged("crab", 10, 3, 7, 0, version=5),
    )

    assert "crab" in live.sold_out


async def test_a_repeated_outcome_is_counted_as_ignored(live: LiveOrders) -> None:
    order = live.records.add(an_order("pending"))
    await live.consume(confirmed(order))

    await live.consume(confirmed(order))

    labels = {"type": "reservation.confirmed", "why": "same"}
    assert live.metric("lc_live_orders_ignored_outcomes_total", **labels) == 1
    assert live.metric("lc_live_orders_order_outcomes_total", outcome="reserved") == 1
    assert live.records.orders[order.order_id].status == "reserved"


async def test_a_stale_outcome_changes_nothing(live: LiveOrders) -> None:
    order = live.records.add(an_order("paid", payment_ref="p1"))

    await live.consume(expired(order))

    assert live.records.orders[order.order_id].status == "paid"
    labels = {"type": "reservation.expired", "why": "stale"}
    assert live.metric("lc_live_orders_ignored_outcomes_total", **labels) == 1
    assert live.records.announced == []


async def test_an_outcome_for_an_unknown_order_is_logged_and_ignored(
    live: LiveOrders, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="services.live_orders.handlers"):
        await live.consume(confirmed(an_order("pending")))

    labels = {"type": "reservation.confirmed", "why": "missing"}
    assert live.metric("lc_live_orders_ignored_outcomes_total", **labels) == 1
    assert [r.getMessage() for r in caplog.records] == ["outcome for an unknown order"]
    assert live.records.announced == []


async def test_a_rejection_is_counted_by_its_reason(live: LiveOrders) -> None:
    order = live.records.add(an_order("pending"))

    await live.consume(rejected(order, "limit_exceeded"))

    assert (
        live.metric("lc_live_orders_order_outcomes_total", outcome="rejected_limit_exceeded") == 1
    )
    stored = live.records.orders[order.order_id]
    assert (stored.status, stored.reason) == ("rejected", "limit_exceeded")
