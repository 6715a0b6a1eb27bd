"""A consumer's batch handler that hangs (a Redis call stuck through a failover) is cancelled
after LC_HANDLER_TIMEOUT_S and the batch handed over again, instead of holding its
partitions forever; one that fails is retried, and the consumer keeps running."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.consumed import ConsumedEvent
from services.common.kafka_consumer import ConsumerRunner
from services.common.kafka_topics import Topics
from services.common.messages import Message, OrderPlaced
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from services.inventory.domain import PlacedOrder, ReserveBatchResult, trace_key
from services.inventory.handlers import EventHandlers
from services.inventory.metrics import InventoryMetrics
from tests.unit.fakes import FakeLotJournals, FakePublisher, FakeStockLedger, consumed


async def test_a_hung_handler_is_cancelled_and_the_batch_retried() -> None:
    calls: list[str] = []
    cancelled = asyncio.Event()

    async def handler(events: Sequence[ConsumedEvent[Message]]) -> None:
        calls.append("call")
        if len(calls) == 1:
            try:
                await asyncio.Event().wait()  # never set: a command that never answers
            except asyncio.CancelledError:
                cancelled.set()
                raise

    metrics = PlatformMetrics.create()
    runner = ConsumerRunner(
        settings=Settings(service="inventory", jwt_secret="x" * 32, handler_timeout_s=0.05),
        group="g",
        topics=["t"],
        handler=handler,
        publisher=FakePublisher(),
        metrics=metrics,
        dlq_topic="dlq",
    )
    await asyncio.wait_for(runner._call_handler([]), 5)
    assert calls == ["call", "call"] and cancelled.is_set()
    assert metrics.handler_failures.labels("g")._value.get() == 1


async def test_a_batch_whose_one_sku_fails_is_retried_with_the_consumer_left_running() -> None:
    """inventory's handler decides the skus of a batch at once; when one fails (its Redis
    master just died) the batch is retried. It used to run them in an asyncio.TaskGroup,
    which on Python 3.11 left the consumer's task marked as cancelled: `_call_handler`
    took the error for a stop and ended the consumer, silently, with its partitions held
    (lag stuck, /readyz 503; the Redis Cluster failover test saw it)."""
    ledger = FailingOnce(sku="tea", error=RedisConnectionError("Error 111 connecting"))
    ledger.receive("crab", "crab-lot", 10)
    ledger.receive("tea", "tea-lot", 10)
    handlers = EventHandlers(
        store=ledger,
        journals=FakeLotJournals(ledger),
        publisher=FakePublisher(),
        topics=Topics.with_prefix("lc."),
        metrics=InventoryMetrics.create(CollectorRegistry()),
        source="test",
        trace_key=trace_key("unit-test-trace-secret"),
    )
    metrics = PlatformMetrics.create()
    runner = ConsumerRunner(
        settings=Settings(service="inventory", jwt_secret="x" * 32),
        group="g",
        topics=["lc.orders"],
        handler=handlers,
        publisher=FakePublisher(),
        metrics=metrics,
        dlq_topic="dlq",
    )
    events: list[ConsumedEvent[Message]] = [
        consumed(placed("o-crab", "crab"), 0),
        consumed(placed("o-tea", "tea"), 1),
    ]

    async def consume_in_its_own_task() -> int:
        await runner._call_handler(events)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    cancelling = await asyncio.wait_for(asyncio.create_task(consume_in_its_own_task()), 10)
    assert cancelling == 0
    assert metrics.handler_failures.labels("g")._value.get() == 1
    assert ledger.sku("crab").orders["o-crab"].state == "reserved"
    assert ledger.sku("tea").orders["o-tea"].state == "reserved"


class FailingOnce(FakeStockLedger):
    """The first reserve_batch of `sku` fails with `error` after a tick (its node is down)."""

    def __init__(self, *, sku: str, error: Exception) -> None:
        super().__init__()
        self._failing_sku = sku
        self._error: Exception | None = error

    async def reserve_batch(
        self, sku: str, orders: Sequence[PlacedOrder], *, topic: str, partition: int
    ) -> ReserveBatchResult:
        await asyncio.sleep(0)
        if sku == self._failing_sku and self._error is not None:
            error, self._error = self._error, None
            raise error
        return await super().reserve_batch(sku, orders, topic=topic, partition=partition)


def placed(order_id: str, sku: str) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        session_id="s1",
        sku=sku,
        buyer_id="buyer-1",
        quantity=1,
        unit_price_cents=1500,
        total_cents=1500,
        per_user_limit=4,
        placed_at="2030-05-01T12:00:00.000Z",
    )
