"""The consumer runner and producer on the real broker: delivery, DLQ, restarts."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common.events import Envelope, decode
from services.common.kafka_consumer import ConsumedEvent, ConsumerRunner
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics, ensure_topics
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from tests.events import data_of, event
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def stock_changed(sku: str, available: int) -> Envelope:
    data = {
        "sku": sku,
        "received": 10,
        "available": available,
        "reserved": 0,
        "sold": 10 - available,
    }
    return event("stock.changed", data, source="test")


@pytest.fixture
async def platform(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[Settings, EventPublisher, Topics]]:
    settings = make_settings("inventory")
    await ensure_topics(settings)
    producer = create_producer(settings)
    await producer.start()
    try:
        yield (
            settings,
            EventPublisher(producer, PlatformMetrics.create()),
            Topics.with_prefix(settings.topic_prefix),
        )
    finally:
        await producer.stop()


def runner_for(
    settings: Settings,
    publisher: EventPublisher,
    topics: Topics,
    handler: Callable[[Sequence[ConsumedEvent]], Any],
    group: str = "g",
) -> ConsumerRunner:
    return ConsumerRunner(
        settings=settings,
        group=f"{settings.topic_prefix}{group}",
        topics=[topics.inventory],
        handler=handler,
        publisher=publisher,
        metrics=PlatformMetrics.create(),
        dlq_topic=topics.dlq,
    )


class Collector:
    def __init__(self) -> None:
        self.events: list[ConsumedEvent] = []

    async def __call__(self, batch: Sequence[ConsumedEvent]) -> None:
        self.events.extend(batch)

    def available_of(self, sku: str) -> list[int]:
        return [data_of(e.envelope)["available"] for e in self.events if e.key == sku]


async def test_events_arrive_in_order_per_key(
    platform: tuple[Settings, EventPublisher, Topics],
) -> None:
    settings, publisher, topics = platform
    await publisher.publish_many(
        (topics.inventory, sku, stock_changed(sku, n)) for n in range(10) for sku in ("a", "b")
    )
    seen = Collector()
    runner = runner_for(settings, publisher, topics, seen)
    await runner.start()
    try:
        await eventually(lambda: _async(len(seen.events) == 20), what="20 events consumed")
        assert seen.available_of("a") == list(range(10))
        assert seen.available_of("b") == list(range(10))
        assert runner.healthy
    finally:
        await runner.stop()


async def test_bad_messages_go_to_the_dlq_and_the_consumer_keeps_going(
    platform: tuple[Settings, EventPublisher, Topics],
) -> None:
    settings, publisher, topics = platform
    garbage = b"\x00\x01 definitely not json"
    unknown = orjson.dumps(
        {
            "event_id": "e-1",
            "type": "order.exploded",
            "version": 1,
            "occurred_at": "2026-11-28T12:00:00Z",
            "source": "test",
            "trace_id": "",
            "data": {},
        }
    )
    await publisher.publish(topics.inventory, "a", stock_changed("a", 1))
    await publisher.send_raw(topics.inventory, b"a", garbage)
    await publisher.send_raw(topics.inventory, b"a", unknown)
    await publisher.publish(topics.inventory, "a", stock_changed("a", 2))
    seen = Collector()
    runner = runner_for(settings, publisher, topics, seen)
    await runner.start()
    try:
        await eventually(lambda: _async(seen.available_of("a") == [1, 2]), what="valid events")
    finally:
        await runner.stop()

    dead = await read_all(settings, topics.dlq, expected=2)
    reasons = {base64.b64decode(data_of(d)["value_b64"]): data_of(d)["reason"] for d in dead}
    assert set(reasons) == {garbage, unknown}
    assert reasons[garbage].startswith("not JSON")
    assert "unknown event type order.exploded" in reasons[unknown]
    assert all(d.type == "event.dead_lettered" for d in dead)
    assert {data_of(d)["offset"] for d in dead} == {1, 2}


async def test_a_restarted_consumer_resumes_after_its_committed_offsets(
    platform: tuple[Settings, EventPublisher, Topics],
) -> None:
    settings, publisher, topics = platform
    await publisher.publish_many((topics.inventory, "a", stock_changed("a", n)) for n in range(5))
    first = Collector()
    runner = runner_for(settings, publisher, topics, first)
    await runner.start()
    await eventually(lambda: _async(len(first.events) == 5), what="first 5")
    await runner.stop()

    await publisher.publish_many(
        (topics.inventory, "a", stock_changed("a", n)) for n in range(5, 8)
    )
    second = Collector()
    runner = runner_for(settings, publisher, topics, second)
    await runner.start()
    try:
        await eventually(lambda: _async(len(second.events) == 3), what="the 3 new events")
        assert second.available_of("a") == [5, 6, 7]
    finally:
        await runner.stop()


async def test_a_failing_handler_is_retried_not_skipped(
    platform: tuple[Settings, EventPublisher, Topics],
) -> None:
    settings, publisher, topics = platform
    await publisher.publish_many((topics.inventory, "a", stock_changed("a", n)) for n in range(3))
    calls: list[list[int]] = []

    async def flaky(batch: Sequence[ConsumedEvent]) -> None:
        calls.append([data_of(e.envelope)["available"] for e in batch])
        if len(calls) == 1:
            raise RuntimeError("Redis blinked")

    runner = runner_for(settings, publisher, topics, flaky)
    await runner.start()
    try:
        await eventually(lambda: _async(len(calls) >= 2), what="a retry")
        assert calls[0] == calls[1]
    finally:
        await runner.stop()


async def test_topics_are_provisioned_idempotently_with_compacted_sessions(
    platform: tuple[Settings, EventPublisher, Topics],
) -> None:
    settings, _, topics = platform
    assert await ensure_topics(settings) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics.all()))
        assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(
            topics.all(), settings.topic_partitions
        )
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics.sessions)]
        )
        entries = {c[0]: c[1] for c in configs[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()


async def read_all(settings: Settings, topic: str, expected: int) -> list[Envelope]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Envelope] = []
    try:
        async with asyncio.timeout(20):
            while len(found) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                found.extend(decode(r.value) for records in batches.values() for r in records)
    finally:
        await consumer.stop()
    return found


async def _async(value: bool) -> bool:
    return value
