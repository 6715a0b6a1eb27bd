"""EventPublisher.publish batches the events of one loop tick; each caller still gets its
own answer: acknowledged, its own send's error, or a timeout. The producer is a fake of
aiokafka's `send` (this seam only; the real broker is in the integration tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from services.common.events import Envelope
from services.common.kafka_producer import EventPublisher
from services.common.messages import OrderRejected
from services.common.metrics import PlatformMetrics


class FakeProducer:
    """`send` answers a delivery future; the test decides how each one ends."""

    def __init__(self, expected: int = 1) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.deliveries: list[asyncio.Future[Any]] = []
        self.expected = expected
        self.all_sent = asyncio.Event()

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value))
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        if len(self.deliveries) >= self.expected:
            self.all_sent.set()
        return delivery


def event(order_id: str) -> Envelope[OrderRejected]:
    return Envelope.of(OrderRejected(order_id, "s1", "crab", "b1", 1, "sold_out"), source="t")


async def test_each_caller_gets_its_own_answer_from_one_batch() -> None:
    producer = FakeProducer(expected=3)
    metrics = PlatformMetrics.create()
    publisher = EventPublisher(producer, metrics, timeout_s=5)  # type: ignore[arg-type]
    calls = [
        asyncio.ensure_future(publisher.publish("t", "crab", event(f"o{n}"))) for n in range(3)
    ]

    await asyncio.wait_for(producer.all_sent.wait(), 1)
    producer.deliveries[0].set_result(None)
    producer.deliveries[1].set_exception(RuntimeError("broker said no"))
    producer.deliveries[2].set_result(None)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RuntimeError)
    assert [key for _, key, _ in producer.sent] == [b"crab"] * 3
    sample = metrics.registry.get_sample_value(
        "lc_events_published_total", {"topic": "t", "type": "order.rejected"}
    )
    assert sample == 3


async def test_a_send_without_acknowledgement_times_out() -> None:
    producer = FakeProducer()
    publisher = EventPublisher(producer, PlatformMetrics.create(), timeout_s=0.05)  # type: ignore[arg-type]
    with pytest.raises(KafkaTimeoutError):
        await asyncio.wait_for(publisher.publish("t", "crab", event("o1")), 2)
    # A late acknowledgement is collected quietly (no "exception never retrieved").
    producer.deliveries[0].set_exception(RuntimeError("late"))
    await asyncio.sleep(0)
