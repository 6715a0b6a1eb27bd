"""Reconcile inventory's Redis and live_orders' orders with the Kafka log:

    python -m services.inventory.reconcile --env-file .run/stack.env [--repair]

Reads the `orders`, `inventory` and `picks` topics from the beginning (a consumer of its
own, in no group: nobody's offsets move), recomputes every sku's received, available,
reserved and sold and every order's state (`reconciliation.recompute`), reads what
inventory's StockStore and live_orders' OrderStore hold, and prints every difference as a
table. Exit code 0 when there is none, 1 otherwise (after `--repair`: when some remain),
2 when the settings are missing.

`--repair` re-applies the order events of every sku with a repairable difference through
inventory's own event handlers, as if the consumer met them again: the same Lua steps,
whose dedup by order_id and recorded offsets make a replay of the log harmless; the
outcomes they answer are published again under their deterministic event ids (consumers
recognise them). Then the log and the stores are read again, until they agree or
`--settle` seconds passed. docs/operations.md says which differences it can repair.

Settings come from the environment or `--env-file` (LC_KAFKA_BOOTSTRAP, LC_REDIS_URL,
LC_TOPIC_PREFIX, LC_REDIS_PREFIX, LC_JWT_SECRET or LC_TRACE_SECRET for the trace codes of
re-sent pick tasks), with the services' defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.exceptions import RedisError

from services.common.consumed import ConsumedEvent
from services.common.events import InvalidEvent, decode
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics
from services.common.messages import Message
from services.common.metrics import PlatformMetrics
from services.common.mint_token import read_env_file
from services.common.redis_scripts import RedisClient, create_redis
from services.common.settings import Settings, SettingsError
from services.inventory.domain import OrderRecord, StockLevels, trace_key
from services.inventory.handlers import EventHandlers
from services.inventory.journal_store import JournalStore
from services.inventory.metrics import InventoryMetrics
from services.inventory.reconciliation import (
    Difference,
    LogState,
    Observed,
    compare,
    recompute,
    render_table,
)
from services.inventory.stock_store import StockStore

# live_orders' order store, read only: the order's status is the third opinion. Imported
# here (an operator's tool), never by inventory's service code.
from services.live_orders.order_store import OrderStore
from services.live_orders.redis_keys import RedisKeys

log = logging.getLogger(__name__)

# Redis reads in flight at once (each is one small command).
READ_CONCURRENCY = 200
# Events handed to the handlers per call on --repair: the consumer's default batch.
REPAIR_BATCH = 500


@dataclass(frozen=True, slots=True)
class LogRead:
    events: list[ConsumedEvent[Message]]
    # Messages no codec accepts (the consumers dead-lettered them too): counted, skipped.
    undecodable: int


@dataclass(frozen=True, slots=True)
class Report:
    log: LogState
    observed: Observed
    differences: list[Difference]
    events_read: int
    undecodable: int


async def read_log(settings: Settings, *, timeout_s: float = 60.0) -> LogRead:
    """Every event of the orders, inventory and picks topics, from the beginning up to
    their end when this started, each partition in offset order."""
    topics = Topics.with_prefix(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"reconcile-{uuid.uuid4().hex[:6]}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    partitions = await _partitions(settings, [topics.orders, topics.inventory, topics.picks])
    await consumer.start()
    try:
        if not partitions:
            return LogRead([], 0)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        events: list[ConsumedEvent[Message]] = []
        undecodable = 0
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the log was not read to its end within {timeout_s} s")
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    try:
                        envelope = decode(record.value)
                    except InvalidEvent:
                        undecodable += 1
                        continue
                    events.append(
                        ConsumedEvent(
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                            key=record.key.decode() if record.key is not None else None,
                            envelope=envelope,
                            timestamp_ms=record.timestamp,
                        )
                    )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return LogRead(events, undecodable)
    finally:
        await consumer.stop()


async def _partitions(settings: Settings, names: Sequence[str]) -> list[TopicPartition]:
    """Every partition of those topics that exist (all topics are described: asking for
    one by name could create it on a broker that auto-creates topics)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"reconcile-{uuid.uuid4().hex[:6]}"
    )
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics()
    finally:
        await admin.close()
    found = {topic["topic"]: topic["partitions"] for topic in described}
    return [
        TopicPartition(name, number)
        for name in names
        for number in sorted(int(part["partition"]) for part in found.get(name, ()))
    ]


async def observe(
    redis: RedisClient, settings: Settings, log_state: LogState, *, live_orders: bool = True
) -> Observed:
    """What inventory's StockStore (and live_orders' OrderStore) hold for what the log
    names. live_orders is left out (statuses None) when its store cannot be read."""
    store = StockStore(redis, settings)
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def view(sku: str) -> tuple[str, StockLevels, dict[str, int]]:
        async with gate:
            found = await store.sku_view(sku)
            if found is None:  # no lots: the counters alone (zeros when none)
                return sku, await store.stock_levels(sku), {}
            return sku, found.levels, {lot.lot_code: lot.quantity for lot in found.lots}

    async def record(order_id: str, sku: str) -> tuple[str, OrderRecord | None]:
        async with gate:
            return order_id, await store.order_record(sku, order_id)

    views = await asyncio.gather(*(view(sku) for sku in log_state.skus))
    records = await asyncio.gather(*(record(oid, o.sku) for oid, o in log_state.orders.items()))
    statuses = await _live_orders_statuses(redis, settings, log_state) if live_orders else None
    return Observed(
        levels={sku: levels for sku, levels, _ in views},
        lots={sku: lots for sku, _, lots in views},
        records=dict(records),
        statuses=statuses,
    )


async def _live_orders_statuses(
    redis: RedisClient, settings: Settings, log_state: LogState
) -> dict[str, str | None] | None:
    orders = OrderStore(redis, RedisKeys(settings.redis_prefix))
    statuses: dict[str, str | None] = {}
    ids = list(log_state.orders)
    try:
        # OrderStore pipelines the reads of one loop tick: a chunk is one round trip.
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            found = await asyncio.gather(*(orders.get(oid) for oid in chunk))
            statuses.update(
                (oid, order.status if order is not None else None)
                for oid, order in zip(chunk, found, strict=True)
            )
    except RedisError as exc:
        log.warning("live_orders' order store unreachable (%s): not compared", exc)
        return None
    return statuses


async def reconcile(settings: Settings, *, live_orders: bool = True) -> Report:
    """Read the log, recompute, read the stores, compare: what a test calls."""
    read = await read_log(settings)
    log_state = recompute(read.events)
    redis = create_redis(settings.redis_url, settings.redis_timeout_s)
    try:
        observed = await observe(redis, settings, log_state, live_orders=live_orders)
    finally:
        await redis.aclose()
    return Report(
        log_state, observed, compare(log_state, observed), len(read.events), read.undecodable
    )


def skus_to_repair(report: Report) -> list[str]:
    """The skus with a difference --repair can fix (an order's, or the sku's own)."""
    skus: set[str] = set()
    for difference in report.differences:
        if not difference.repairable:
            continue
        kind, _, name = difference.subject.partition(" ")
        skus.add(name if kind == "sku" else report.log.orders[name].sku)
    return sorted(sku for sku in skus if sku in report.log.sku_events)


async def repair(settings: Settings, report: Report) -> list[str]:
    """Re-apply the order events of the skus with repairable differences through
    inventory's EventHandlers (the consumer's own path: reserve_batch, commit, release,
    the journals, the outcomes published). Returns the skus replayed."""
    skus = skus_to_repair(report)
    if not skus:
        return []
    redis = create_redis(settings.redis_url, settings.redis_timeout_s)
    platform = PlatformMetrics.create()
    producer = create_producer(settings)
    await producer.start()
    try:
        handlers = EventHandlers(
            store=StockStore(redis, settings),
            journals=JournalStore(redis, settings.redis_prefix),
            publisher=EventPublisher(producer, platform, settings.publish_timeout_s),
            topics=Topics.with_prefix(settings.topic_prefix),
            metrics=InventoryMetrics.create(platform.registry),
            source=settings.instance_id or "reconcile",
            trace_key=trace_key(settings.trace_key_secret),
        )
        for sku in skus:
            # As the consumer meets them: per partition, in offset order, in batches.
            by_partition: dict[tuple[str, int], list[ConsumedEvent[Message]]] = {}
            for event in report.log.sku_events[sku]:
                by_partition.setdefault((event.topic, event.partition), []).append(event)
            for events in by_partition.values():
                ordered = sorted(events, key=lambda e: e.offset)
                for start in range(0, len(ordered), REPAIR_BATCH):
                    await handlers(ordered[start : start + REPAIR_BATCH])
    finally:
        await producer.stop()
        await redis.aclose()
    return skus


async def run(
    settings: Settings, *, do_repair: bool, live_orders: bool, settle_s: float
) -> tuple[Report, list[str]]:
    """Reconcile, and with `do_repair` repair and reconcile again until the stores agree
    or `settle_s` passed (the consumers apply what the repair published meanwhile)."""
    report = await reconcile(settings, live_orders=live_orders)
    if not do_repair or not report.differences:
        return report, []
    repaired = await repair(settings, report)
    if not repaired:  # only differences it cannot repair: nothing will change
        return report, []
    deadline = time.monotonic() + settle_s
    while True:
        report = await reconcile(settings, live_orders=live_orders)
        if not report.differences or time.monotonic() > deadline:
            return report, repaired
        await asyncio.sleep(0.5)  # a poll interval while the consumers catch up


def settings_from(env: dict[str, str]) -> Settings:
    # The tool runs outside the services but reads their variables; the JWT secret only
    # keys trace codes of re-sent pick tasks here, so a report needs none.
    env = {"LC_JWT_SECRET": "unused-by-a-report", **env} if "LC_JWT_SECRET" not in env else env
    settings = Settings.from_env("inventory", env)
    return settings.replace(instance_id=settings.instance_id or f"reconcile-{os.getpid()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", type=Path, help="read the LC_* settings from this file")
    parser.add_argument(
        "--repair", action="store_true", help="re-apply the log through the Lua steps"
    )
    parser.add_argument(
        "--no-live-orders", action="store_true", help="do not compare live_orders' orders"
    )
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds to wait for agreement after --repair"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    env = read_env_file(args.env_file) if args.env_file else dict(os.environ)
    if args.repair and not (env.get("LC_JWT_SECRET") or env.get("LC_TRACE_SECRET")):
        print("--repair needs LC_TRACE_SECRET or LC_JWT_SECRET (trace codes)", file=sys.stderr)
        return 2
    try:
        settings = settings_from(env)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    report, repaired = asyncio.run(
        run(
            settings,
            do_repair=args.repair,
            live_orders=not args.no_live_orders,
            settle_s=args.settle,
        )
    )
    print(summary(report, repaired if args.repair else None))
    return 1 if report.differences else 0


def summary(report: Report, repaired: list[str] | None = None) -> str:
    lines = [
        f"log: {report.events_read} events ({report.undecodable} undecodable), "
        f"{len(report.log.skus)} skus, {len(report.log.orders)} orders; "
        f"live_orders compared: {'yes' if report.observed.statuses is not None else 'no'}"
    ]
    if repaired is not None:
        lines.append(f"repair re-applied the log of: {', '.join(repaired) or 'nothing'}")
    if report.differences:
        lines += [f"{len(report.differences)} differences:", render_table(report.differences)]
    else:
        lines.append("no differences")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
