"""A consumer's batch handler that hangs (a Redis call stuck through a failover) is cancelled
after LC_HANDLER_TIMEOUT_S and the batch handed over again, instead of holding its
partitions forever."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.common.consumed import ConsumedEvent
from services.common.kafka_consumer import ConsumerRunner
from services.common.messages import Message
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from tests.unit.fakes import FakePublisher


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
