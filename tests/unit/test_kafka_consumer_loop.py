"""The consumer's poll loop ends only on `stop()`. A round that fails (here: the dead-letter
publish, the broker away) is logged, its partitions are rewound to their first unhandled
offset, and polling goes on: a consumer task that ended on its own would keep its
partitions (aiokafka heartbeats in a task of its own) and leave them unconsumed. Against
a stand-in consumer (no broker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from services.common.events import Outgoing
from services.common.kafka_consumer import ConsumerRunner
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from tests.unit.fakes import FakePublisher
from tests.waiting import eventually

TP = TopicPartition("lc.orders", 0)


class StandInConsumer:
    """One partition holding `values`; getmany hands out what lies past the position
    (a seek moves it), commit records the offsets."""

    def __init__(self, values: list[bytes]) -> None:
        self.records = [
            ConsumerRecord(TP.topic, TP.partition, i, 0, 0, b"k", v, None, 1, len(v), [])
            for i, v in enumerate(values)
        ]
        self.position = 0
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self._idle = asyncio.Event()  # never set: an empty poll waits out its timeout

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batch = self.records[self.position : self.position + max_records]
        if not batch:
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    await self._idle.wait()
            except TimeoutError:
                pass
            return {}
        self.position += len(batch)
        return {TP: batch}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position = offset

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records)

    async def stop(self) -> None:
        pass


class FailingOncePublisher(FakePublisher):
    """The first send fails: the broker did not acknowledge it in time."""

    def __init__(self) -> None:
        super().__init__()
        self.failures_left = 1

    async def publish_many(self, items: Iterable[Outgoing]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise KafkaTimeoutError("no acknowledgement within 5 s")
        await super().publish_many(items)


async def test_a_failed_round_is_rewound_and_the_consumer_keeps_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[object] = []

    async def handler(events: object) -> None:
        handled.append(events)

    publisher = FailingOncePublisher()
    runner = ConsumerRunner(
        settings=Settings(service="inventory", jwt_secret="x" * 32),
        group="g",
        topics=[TP.topic],
        handler=handler,
        publisher=publisher,
        metrics=PlatformMetrics.create(),
        dlq_topic="lc.dlq",
        commit_interval_s=0,
    )
    consumer = StandInConsumer([b"not json", b"not json either"])
    runner._consumer = consumer  # type: ignore[assignment]
    runner._task = asyncio.create_task(runner._run())
    caplog.set_level(logging.ERROR, "services.common.kafka_consumer")

    async def committed_past_both() -> bool:
        return any(c.get(TP) == OffsetAndMetadata(2, "") for c in consumer.commits)

    await eventually(committed_past_both, timeout=10, what="offset 2 committed")
    # The first round's DLQ publish failed: rewound to its first offset, then both
    # records dead-lettered once, in order, and nothing skipped.
    assert consumer.seeks == [(TP, 0)]
    assert [env.message.offset for _, _, env in publisher.sent] == [0, 1]  # type: ignore[attr-defined]
    assert any("consumer round failed" in r.getMessage() for r in caplog.records)
    assert not runner._task.done() and runner.healthy
    assert handled == []

    await runner.stop()
    assert runner._task.done()
    assert not [r for r in caplog.records if "stopped while it should run" in r.getMessage()]
