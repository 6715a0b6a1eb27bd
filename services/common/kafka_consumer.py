"""A consumer-group runner: batches from `getmany`, explicit offset commits, a DLQ.

Delivery is at-least-once: a partition's batch is committed only after its handler returned,
so a crash replays it. Handlers make that harmless by being idempotent (dedup by order_id
or event_id, or the consumed offset recorded in the same atomic Redis step as the effect).
Offsets are committed every `commit_interval_s` at most (and always before a partition is
given up, and on stop): a commit is a broker round trip, and with one per poll a burst
paid more for its commits than for its events. A crash replays that much more, to no
effect.
A message that cannot be decoded or validated goes to the DLQ with the reason and its
original bytes, and its offset is committed with the batch: never silently skipped, never
blocking the partition.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.common.background import cancel_requested, run_concurrently, stop_tasks
from services.common.consumed import ConsumedEvent
from services.common.events import Envelope, InvalidEvent, Publisher, receive
from services.common.messages import EventDeadLettered, Message
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from services.common.transport_security import kafka_security_kwargs

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)

# Adaptive fetches (`adaptive_fetch=True`): while the runner's fetch policy names a hold
# (re-asked every RATE_WINDOW_S) the broker is asked to hold each fetch until
# BATCH_MIN_BYTES came or the hold passed, so a burst arrives in batches of a few ms
# instead of one request per handful of events (each fetch, produce and Lua call is a
# fixed cost); with no hold fetches return at once, so a lone order waits for nobody.
# aiokafka fetches again as soon as a fetch's records are taken, so a held consumer
# fetches about once per hold whatever the load: at ~600 µs of client and broker CPU per
# fetch, that is the hold's price per second, and the hold is every event's price on
# that hop. So the hold grows with the load: SHORT_HOLD_MS (2 ms, not 5: 2-3 ms off the
# p50 at 8 connections, bench/RESULTS.md) and LONG_HOLD_MS once the load is the
# throughput's (6 ms: 610 -> 527 µs of CPU per decided order at 64 connections with 4 ms,
# ~40 less again with 6, where a request queues ~20 ms for the cores anyway). The
# default policy (`hold_by_rate`): short above BATCH_MODE_RATE events a second, long
# above LONG_HOLD_RATE, none below LATENCY_MODE_RATE; each step back down only below a
# lower rate (no flapping).
BATCH_MODE_RATE = 1_000
LATENCY_MODE_RATE = 400
LONG_HOLD_RATE = 2_000
LONG_HOLD_RELEASE_RATE = 1_500
BATCH_MIN_BYTES = 16 * 1024
SHORT_HOLD_MS = 2
LONG_HOLD_MS = 6
RATE_WINDOW_S = 0.5
# A consumer nobody waits on (the notifier's projection, inventory's pick completions)
# asks for more than a fetch wait's worth of events at any sale's rate: the broker answers
# after LC_KAFKA_FETCH_MAX_WAIT_MS with whatever came, so a burst is a few large batches
# and an idle topic ~20 fetches a second.
GATHER_FETCH_MIN_BYTES = 1024 * 1024

# How long the broker should hold the next window's fetches (ms; 0: answer at once),
# given the events a second of the last window and the hold now.
FetchPolicy = Callable[[float, int], int]


def hold_by_rate(rate: float, hold_ms: int) -> int:
    """Long above LONG_HOLD_RATE, short above BATCH_MODE_RATE; a hold is kept down to
    the lower thresholds (LONG_HOLD_RELEASE_RATE, LATENCY_MODE_RATE)."""
    if rate >= LONG_HOLD_RATE or (hold_ms >= LONG_HOLD_MS and rate > LONG_HOLD_RELEASE_RATE):
        return LONG_HOLD_MS
    if rate >= BATCH_MODE_RATE or (hold_ms and rate > LATENCY_MODE_RATE):
        return SHORT_HOLD_MS
    return 0


# Receives the decoded events of one partition, in offset order.
BatchHandler = Callable[[Sequence[ConsumedEvent[Message]]], Awaitable[None]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch in flight, and commit what was handled: another member takes
        # the partitions from there and does not redo it.
        async with self._runner.processing:
            await self._runner.commit_pending()
            self._runner.forget_lag(revoked)
            log.info(
                "partitions revoked",
                extra={"group": self._runner.group, "partitions": str(revoked)},
            )

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info(
            "partitions assigned", extra={"group": self._runner.group, "partitions": str(assigned)}
        )


class ConsumerRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        group: str,
        topics: Sequence[str],
        handler: BatchHandler,
        publisher: Publisher,
        metrics: PlatformMetrics,
        dlq_topic: str,
        max_records: int | None = None,
        fetch_min_bytes: int = 1,
        commit_interval_s: float = 0.2,
        handles: Collection[type[Message]] | None = None,
        adaptive_fetch: bool = False,
        fetch_policy: FetchPolicy = hold_by_rate,
    ) -> None:
        self.group = group
        self._settings = settings
        self._topics = list(topics)
        self._handler = handler
        self._publisher = publisher
        self._metrics = metrics
        self._dlq_topic = dlq_topic
        self._max_records = max_records or settings.consumer_batch_max
        self._fetch_min_bytes = fetch_min_bytes
        # The event types the handler acts on (None: all). Others on the same topics are
        # counted, their offsets committed, and never decoded past the envelope: inventory
        # reads the orders topic, where live_orders also puts its attempts.tallied.
        self._handles = frozenset(handles) if handles is not None else None
        self._adaptive_fetch = adaptive_fetch
        self._fetch_policy = fetch_policy
        self._hold_ms = 0
        self._window_started = 0.0
        self._window_events = 0
        self._commit_interval_s = commit_interval_s
        # Handled but not yet committed: partition -> next offset.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_poll = 0.0
        self._failing_since: float | None = None
        self._stopping = False
        self.processing = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        """Polling, and the handler not stuck failing for more than 10 s."""
        if self._task is None or self._task.done():
            return False
        now = time.monotonic()
        if self._failing_since is not None and now - self._failing_since > 10:
            return False
        return now - self._last_poll < 10

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self.group,
            client_id=self._settings.instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self._max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=self._settings.kafka_fetch_max_wait_ms,
            fetch_min_bytes=self._fetch_min_bytes,
            **kafka_security_kwargs(self._settings),
        )
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        await self._consumer.start()
        self._last_poll = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.group}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Only `stop()` ends the consumer; should anything else, say so at once (the
        task's error would otherwise surface only when stop() awaits it)."""
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        log.error(
            "consumer stopped while it should run",
            extra={"group": self.group},
            exc_info=error,
        )

    async def stop(self) -> None:
        """Finish the batch in flight (for up to 5 s), commit it, leave the group. A batch
        cut short is not committed and replays on the next owner, harmlessly."""
        if self._task is not None:
            self._stopping = True
            try:
                async with asyncio.timeout(5):
                    async with self.processing:
                        await self.commit_pending()
            except TimeoutError:
                log.warning("stopping mid-batch", extra={"group": self.group})
            await stop_tasks(self._task)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        """Poll and handle until `stop()`. Nothing else ends this loop: a task that ended on
        its own would keep its partitions (aiokafka heartbeats in a task of its own) and
        leave them unconsumed, with nothing in the log and lag growing. A failed round
        (the handler is retried in `_call_handler`; what is left is a dead-letter publish,
        a poll) is logged, its partitions rewound to their first unhandled offset, and
        polling resumes after a pause."""
        assert self._consumer is not None
        failures = 0
        while True:
            try:
                await self._poll_once(self._consumer)
            except Exception:
                if self._stopping:
                    return
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
                log.exception(
                    "consumer round failed; polling again from the first unhandled offsets",
                    extra={"group": self.group, "attempt": failures, "retry_in_s": delay},
                )
                failures += 1
                await asyncio.sleep(delay)
                continue
            if self._stopping:
                return
            if failures:
                failures = 0
                self._failing_since = None

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        # While offsets wait for their commit, poll often enough to commit them on time.
        timeout_ms = int(self._commit_interval_s * 1000) if self._uncommitted else 500
        batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=self._max_records)
        self._last_poll = time.monotonic()
        batches = {tp: records for tp, records in batches.items() if records}
        if self._adaptive_fetch:
            self._adapt_fetches(consumer, sum(len(r) for r in batches.values()))
        if not batches:
            if self._uncommitted and self._commit_due():
                async with self.processing:
                    await self.commit_pending()
            return
        async with self.processing:
            # The lock is held for one poll's batches: a revocation waits for them
            # (at most max_records records), then their offsets are committed.
            if self._stopping:
                return
            owned = {tp: r for tp, r in batches.items() if tp in consumer.assignment()}
            # Partitions hold different keys (SKUs, warehouses), so their batches are
            # independent: handled at once, then committed in one request. One that
            # fails stops the others (run_concurrently), so a rewound batch is never
            # handled twice at the same time.
            try:
                await run_concurrently(*(self._handle_partition(r) for r in owned.values()))
            except BaseException:
                # The next poll must return these records again, not the ones after them:
                # a later commit would otherwise pass over events never handled.
                self._rewind(consumer, owned)
                raise
            for tp, records in owned.items():
                self._uncommitted[tp] = records[-1].offset + 1
            if self._commit_due():
                await self.commit_pending()

    def _rewind(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        assigned = consumer.assignment()
        for tp, records in batches.items():
            if tp in assigned:
                consumer.seek(tp, records[0].offset)

    async def _handle_partition(self, records: list[ConsumerRecord]) -> None:
        events: list[ConsumedEvent[Message]] = []
        counts: collections.Counter[str] = collections.Counter()
        for record in records:
            try:
                received = receive(record.value)
                counts[received.type] += 1
                if self._handles is not None and received.message_class not in self._handles:
                    continue
                envelope = received.decode()
            except InvalidEvent as exc:
                await self._dead_letter(record, exc.reason)
                continue
            events.append(
                ConsumedEvent(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key.decode("utf-8", "replace") if record.key is not None else None,
                    envelope=envelope,
                    timestamp_ms=record.timestamp,
                )
            )
        # Counted per batch, not per event: a labelled counter costs a lock and a lookup.
        for kind, count in counts.items():
            self._metrics.events_consumed.labels(self.group, records[0].topic, kind).inc(count)
        if events:
            await self._call_handler(events)
        self._metrics.consumer_batch_size.labels(self.group).observe(len(records))

    def _adapt_fetches(self, consumer: AIOKafkaConsumer, events: int) -> None:
        now = time.monotonic()
        self._window_events += events
        elapsed = now - self._window_started
        if elapsed < RATE_WINDOW_S:
            return
        rate = self._window_events / elapsed
        self._window_started, self._window_events = now, 0
        hold_ms = self._fetch_policy(rate, self._hold_ms)
        if hold_ms == self._hold_ms:
            return
        self._hold_ms = hold_ms
        # aiokafka reads these two when it builds each fetch request (aiokafka is pinned;
        # tests/unit/test_kafka_consumer_adaptive.py fails if they move).
        fetcher = consumer._fetcher
        fetcher._fetch_min_bytes = BATCH_MIN_BYTES if hold_ms else self._fetch_min_bytes
        fetcher._fetch_max_wait_ms = hold_ms or self._settings.kafka_fetch_max_wait_ms
        self._metrics.consumer_batch_mode.labels(self.group).set(1 if hold_ms else 0)
        self._metrics.consumer_fetch_hold.labels(self.group).set(hold_ms / 1000)

    def _commit_due(self) -> bool:
        return time.monotonic() - self._last_commit >= self._commit_interval_s

    async def commit_pending(self) -> None:
        """Commit the offsets of every batch handled so far (callers hold `processing`)."""
        consumer = self._consumer
        if consumer is None or not self._uncommitted:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = time.monotonic()
        owned = consumer.assignment()
        try:
            await consumer.commit(
                {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items() if tp in owned}
            )
        except (CommitFailedError, KafkaError) as exc:
            # A partition moved to another member mid-batch: it will replay the batch,
            # which the idempotent handler turns into no new effect.
            log.warning("commit failed", extra={"group": self.group, "error": repr(exc)})
        for tp, next_offset in offsets.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self._metrics.consumer_lag.labels(self.group, tp.topic, str(tp.partition)).set(
                    max(highwater - next_offset, 0)
                )

    def forget_lag(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the lag series of partitions this member gave up: their new owner reports
        them, and a stale value left here would add to the group's lag for good."""
        for tp in partitions:
            self._metrics.consumer_lag.remove(self.group, tp.topic, str(tp.partition))

    async def _call_handler(self, events: list[ConsumedEvent[Message]]) -> None:
        attempt = 0
        while True:
            try:
                # A handler that never returns (a Redis command that hangs through a
                # failover, a lost reply never timed out) would hold the partitions
                # forever: past the deadline it is cancelled and the batch retried, which
                # the handlers' idempotence makes harmless.
                async with asyncio.timeout(self._settings.handler_timeout_s):
                    await self._handler(events)
            except Exception:
                # Stopping, or cancelled by a failed sibling partition (a library may have
                # turned the CancelledError into its own error): give up the batch.
                if self._stopping or cancel_requested():
                    raise
                self._metrics.handler_failures.labels(self.group).inc()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                log.exception(
                    "batch handler failed; retrying",
                    extra={"group": self.group, "attempt": attempt, "retry_in_s": delay},
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._failing_since = None
            return

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        dead = Envelope.of(
            EventDeadLettered(
                reason=reason[:2000],
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                consumer_group=self.group,
                key_b64=base64.b64encode(record.key).decode() if record.key is not None else None,
                value_b64=base64.b64encode(record.value or b"").decode(),
            ),
            source=self._settings.instance_id,
            # Several groups read the same bad message: each records it once.
            dedup_key=f"{self.group}:{record.topic}:{record.partition}:{record.offset}",
        )
        await self._publisher.publish(self._dlq_topic, f"{record.topic}:{record.partition}", dead)
        self._metrics.dead_lettered.labels(self.group, record.topic).inc()
        log.warning(
            "message dead-lettered",
            extra={
                "group": self.group,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
            },
        )
