"""The one Kafka producer of a process, and the way events are published."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from services.common.events import Envelope, encode
from services.common.messages import Message
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from services.common.transport_security import kafka_security_kwargs


class KeyHashPartitioner:
    """aiokafka's default partitioning (murmur2 of the key, as the Java client), with the
    hash of each key remembered: murmur2 is pure Python in aiokafka, about 5 us a call,
    and a sale sends thousands of events under a handful of keys (SKUs, warehouses)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


def create_producer(settings: Settings) -> AIOKafkaProducer:
    # acks=all + idempotence: an acknowledged event is on every in-sync replica and a
    # retried send never duplicates it. aiokafka keeps one produce request in flight per
    # broker, so the events of a burst batch up behind it; the linger is kept short
    # (`LC_KAFKA_LINGER_MS`) because every hop of an order's path pays it.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.instance_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.kafka_linger_ms,
        partitioner=KeyHashPartitioner(),
        max_batch_size=256 * 1024,
        # Also bounds how long send() waits for buffer room or metadata, so a publish
        # never waits past LC_PUBLISH_TIMEOUT_S before its delivery is even pending.
        request_timeout_ms=max(int(settings.publish_timeout_s * 1000), 1000),
        **kafka_security_kwargs(settings),
    )


class EventPublisher:
    """Publishes validated envelopes. `publish` returns once the broker acknowledged, or
    raises `KafkaTimeoutError` after `timeout_s`: with the broker away a caller gets a
    prompt error (a buyer a 503, a consumer a retry) instead of hanging. A send that timed
    out may still be delivered later; every publisher here uses deterministic event ids or
    idempotent consumers, so a retry that publishes it again is harmless."""

    def __init__(
        self, producer: AIOKafkaProducer, metrics: PlatformMetrics, timeout_s: float = 5.0
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._timeout_s = timeout_s
        # `publish` calls of the current loop tick: (topic, key, value, type, caller's future).
        self._tick: list[tuple[str, bytes, bytes, str, asyncio.Future[None]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def publish(self, topic: str, key: str, envelope: Envelope[Message]) -> None:
        """One event (a request's hot path). The events published in one loop tick are
        sent together and their acknowledgements awaited with one timer, not one each."""
        value = encode(envelope)
        loop = asyncio.get_running_loop()
        acknowledged: asyncio.Future[None] = loop.create_future()
        self._tick.append((topic, key.encode(), value, envelope.type, acknowledged))
        if len(self._tick) == 1:
            loop.call_soon(self._send_tick)
        await acknowledged

    def _send_tick(self) -> None:
        batch, self._tick = self._tick, []
        task = asyncio.ensure_future(self._send_batch(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_batch(
        self, batch: list[tuple[str, bytes, bytes, str, asyncio.Future[None]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        deliveries: list[asyncio.Future[Any]] = []
        try:
            # send() waits only for metadata or buffer room, bounded by the producer's
            # request_timeout_ms (the publish timeout).
            for topic, key, value, _, _ in batch:
                deliveries.append(await self._producer.send(topic, value, key=key))
        except BaseException as exc:
            for *_, acknowledged in batch[len(deliveries) :]:
                if not acknowledged.done():
                    acknowledged.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        counts = collections.Counter(
            (topic, kind) for topic, _, _, kind, _ in batch[: len(deliveries)]
        )
        for (topic, kind), count in counts.items():
            self._metrics.events_published.labels(topic, kind).inc(count)
        waiting = [d for d in deliveries if not d.done()]
        if waiting:
            # asyncio.wait, not a cancelling timeout: aiokafka's delivery futures do not
            # always give way to a cancellation while the broker is unreachable.
            await asyncio.wait(waiting, timeout=max(deadline - loop.time(), 0))
        for (*_, acknowledged), delivery in zip(batch, deliveries, strict=False):
            if acknowledged.done():  # the caller gave up (cancelled)
                delivery.add_done_callback(_retrieve)
            elif not delivery.done():
                delivery.add_done_callback(_retrieve)
                acknowledged.set_exception(
                    KafkaTimeoutError(f"no acknowledgement within {self._timeout_s} s")
                )
            elif delivery.cancelled():
                acknowledged.set_exception(KafkaTimeoutError("the send was cancelled"))
            elif (error := delivery.exception()) is not None:
                acknowledged.set_exception(error)
            else:
                acknowledged.set_result(None)

    async def publish_many(self, items: Iterable[tuple[str, str, Envelope[Message]]]) -> None:
        """Send all, then wait for every acknowledgement: one round of batched requests
        instead of one round trip per event. Raises if any send failed or timed out."""
        sending = asyncio.ensure_future(self._send_all(list(items)))
        try:
            # asyncio.wait, not a cancelling timeout: aiokafka's delivery futures do not
            # always give way to a cancellation while the broker is unreachable, and a
            # caller must get its error on time regardless.
            done, _ = await asyncio.wait({sending}, timeout=self._timeout_s)
        except asyncio.CancelledError:
            sending.cancel()
            raise
        if not done:
            sending.cancel()
            sending.add_done_callback(_retrieve)
            raise KafkaTimeoutError(f"no acknowledgement within {self._timeout_s} s")
        sending.result()

    async def _send_all(self, items: list[tuple[str, str, Envelope[Message]]]) -> None:
        pending = []
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        try:
            for topic, key, envelope in items:
                pending.append(await self._producer.send(topic, encode(envelope), key=key.encode()))
                counts[topic, envelope.type] += 1
        finally:
            # Per batch, not per event (a labelled counter costs a lock and a lookup).
            for (topic, kind), count in counts.items():
                self._metrics.events_published.labels(topic, kind).inc(count)
        if pending:
            await asyncio.gather(*pending)

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value, key=key)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of a send abandoned after its timeout (it may still succeed)."""
    if not task.cancelled():
        task.exception()
