"""The one Kafka producer of a process, and the way events are published."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from services.common.events import Envelope, encode
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings


def create_producer(settings: Settings) -> AIOKafkaProducer:
    # acks=all + idempotence: an acknowledged event is on every in-sync replica and a
    # retried send never duplicates it. A short linger batches the burst of one sale start
    # (thousands of events a second) into few requests without slowing a lone event.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.instance_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )


class EventPublisher:
    """Publishes validated envelopes. `publish` returns once the broker acknowledged."""

    def __init__(self, producer: AIOKafkaProducer, metrics: PlatformMetrics) -> None:
        self._producer = producer
        self._metrics = metrics

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        await self.publish_many([(topic, key, envelope)])

    async def publish_many(self, items: Iterable[tuple[str, str, Envelope]]) -> None:
        """Send all, then wait for every acknowledgement: one round of batched requests
        instead of one round trip per event. Raises if any send failed."""
        pending = []
        for topic, key, envelope in items:
            pending.append(await self._producer.send(topic, encode(envelope), key=key.encode()))
            self._metrics.events_published.labels(topic, envelope.type).inc()
        if pending:
            await asyncio.gather(*pending)

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value, key=key)
