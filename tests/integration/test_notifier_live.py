"""Host counters over the real topics: convergence, push rate, restart, SSE."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from services.common.clock import from_rfc3339
from services.common.kafka_topics import Topics
from services.common.settings import Settings
from services.notifier.app import create_app
from services.notifier.handlers import consumed_topics
from tests.conftest import auth
from tests.events import event
from tests.integration.test_notifier_support import (
    Frames,
    Item,
    Sale,
    collect,
    open_session_socket,
    publisher,
    snapshot_matches,
    stop_task,
)
from tests.kafka_offsets import group_caught_up
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def burst(sale: Sale, sku_a: str, sku_b: str, attempts: int) -> list[Item]:
    """A sale start: attempts on two SKUs until both sell out, payments, cancels,
    expiries, and fast-path rejections once sold out."""
    items: list[Item] = []
    for i in range(attempts):
        sku = sku_a if i % 3 else sku_b
        items += sale.attempt(sku, quantity=1 + (i % 2), over_limit=(i % 17 == 5))
        if len(sale.holds) > 4:
            items += sale.settle(("committed", "committed", "released", "expired")[i % 4])
    return items


async def test_snapshots_converge_within_500ms_and_at_most_4_per_second(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sale = Sale(topics, session_id, "host-1", {"crab-001": 40, "rice-002": 25})
    async with publisher(settings) as pub:
        await pub.publish_many(sale.session_updated() + sale.all_stock())
        ws = await open_session_socket(http, running.url, session_id, auth("host", "host-1"))
        frames, reader = collect(ws)
        await eventually(lambda: _true(frames.last), what="first snapshot")
        first = frames.last
        assert first is not None and first["type"] == "snapshot"
        assert first["session_id"] == session_id

        items = burst(sale, "crab-001", "rice-002", 160)
        chunks = [items[i : i + 25] for i in range(0, len(items), 25)]
        started = asyncio.get_running_loop().time()
        for chunk in chunks:
            await pub.publish_many(chunk)
            await asyncio.sleep(0.05)  # a burst spread over ~1.5 s, not a readiness wait
        last_ack = asyncio.get_running_loop().time()

        await eventually(
            lambda: _true(frames.last and snapshot_matches(frames.last, sale.truth)),
            timeout=10,
            interval=0.01,
            what="snapshot == truth",
        )
        arrived = next(t for t, f in frames.items if snapshot_matches(f, sale.truth))
        await ws.close()
        await stop_task(reader)

    assert sale.truth.totals["units_sold"] > 0 and sale.truth.totals["rejected_sold_out"] > 0
    assert arrived - last_ack <= 0.5, f"converged {arrived - last_ack:.3f}s after the last event"
    # By the server's clock (`at`, the push tick's time): arrival times on this shared
    # machine bunch up when the test process is busy.
    wall_started = time.time() - (asyncio.get_running_loop().time() - started)
    during = [from_rfc3339(f["at"]).timestamp() for _, f in frames.items]
    during = [t for t in during if t >= wall_started - 0.001]
    assert len(during) >= 3, "the burst should have produced several snapshots"
    for earlier, later in zip(during, during[4:], strict=False):
        assert later - earlier >= 0.999, "more than 4 snapshots within one second"
    seqs = [f["seq"] for _, f in frames.items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert set(frames.items[-1][1]["totals"]) == set(sale.truth.totals)


async def test_restart_and_full_replay_still_counts_each_event_once(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    topics = Topics.with_prefix(settings.topic_prefix)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sale = Sale(topics, session_id, "host-2", {"tea-003": 30})
    first_app = await run_app(create_app, settings)
    async with publisher(settings) as pub:
        await pub.publish_many(sale.session_updated() + sale.all_stock())
        first_half = burst(sale, "tea-003", "tea-003", 40)
        await pub.publish_many(first_half)
        ws = await open_session_socket(http, first_app.url, session_id, auth("admin", "ops"))
        frames, reader = collect(ws)
        await eventually(
            lambda: _true(frames.last and frames.last["totals"]["attempts"] > 0),
            what="some events applied",
        )
        await first_app.stop()  # mid-stream: the rest is published while it is down
        await stop_task(reader)

        second_half = burst(sale, "tea-003", "tea-003", 50)
        await pub.publish_many(second_half[: len(second_half) // 2])
        # The worst replay there is: the group forgets every committed offset, so the
        # next notifier re-reads every topic from the start.
        await _rewind_group(settings, topics)
        # And inventory re-publishes some outcomes after a "crash": same event ids,
        # new offsets.
        republished = [item for item in first_half if item[2].type.startswith("reservation.")]
        await pub.publish_many(republished[:10])

        second_app = await run_app(create_app, make_settings("notifier"))
        await pub.publish_many(second_half[len(second_half) // 2 :])
        ws = await open_session_socket(http, second_app.url, session_id, auth("host", "host-2"))
        frames, reader = collect(ws)
        await eventually(
            lambda: _true(frames.last and snapshot_matches(frames.last, sale.truth)),
            timeout=20,
            what="snapshot == truth after restart and replay",
        )
        await ws.close()
        await stop_task(reader)

        # It stays there: once the group has applied every topic to its end, nothing is
        # left to add a second count; a fresh subscriber's first snapshot shows the state.
        group = f"{settings.topic_prefix}notifier"

        async def replayed() -> bool:
            return all(
                [
                    await group_caught_up(settings.kafka_bootstrap, group, topic)
                    for topic in consumed_topics(topics)
                ]
            )

        await eventually(replayed, timeout=20, interval=0.2, what="notifier group caught up")
        again = await open_session_socket(http, second_app.url, session_id, auth("admin", "ops"))
        assert snapshot_matches(orjson.loads((await again.receive()).data), sale.truth)
        await again.close()
    assert sale.truth.totals["paid_orders"] > 0


async def test_server_sent_events_carry_the_same_snapshots(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sale = Sale(topics, session_id, "host-3", {"peach-04": 5})
    async with publisher(settings) as pub:
        await pub.publish_many(sale.session_updated() + sale.all_stock())
        ws = await open_session_socket(http, running.url, session_id, auth("host", "host-3"))
        await ws.close()
        async with http.get(
            f"{running.url}/v1/sessions/{session_id}/events", headers=auth("host", "host-3")
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            items: list[Item] = []
            for _ in range(8):
                items += sale.attempt("peach-04")
            await pub.publish_many(items)
            snapshot: dict[str, Any] = {}
            async with asyncio.timeout(10):
                while not snapshot or not snapshot_matches(snapshot, sale.truth):
                    line = (await response.content.readline()).decode().strip()
                    if line.startswith("data: "):
                        snapshot = orjson.loads(line[len("data: ") :])
                        assert snapshot["type"] == "snapshot"
    assert sale.truth.totals["rejected_sold_out"] == 3
    async with http.get(
        f"{running.url}/v1/sessions/{session_id}/events", headers=auth("host", "someone-else")
    ) as response:
        assert response.status == 404


async def test_an_older_stock_snapshot_never_replaces_a_newer_one(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """Inventory processes may land their stock.changed in another order than the states
    they read; the projection keeps the highest version whatever order they arrive in."""
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sku = "crab-007"
    sale = Sale(topics, session_id, "host-7", {sku: 10})

    def stock(available: int, reserved: int, sold: int, version: int | None) -> Item:
        data: dict[str, Any] = {
            "sku": sku,
            "received": 10,
            "available": available,
            "reserved": reserved,
            "sold": sold,
        }
        if version is not None:
            data["version"] = version
        return (topics.inventory, sku, event("stock.changed", data, source="test"))

    def sku_state(frames: Frames) -> dict[str, int] | None:
        return frames.last["skus"].get(sku) if frames.last else None

    async with publisher(settings) as pub:
        await pub.publish_many([*sale.session_updated(), stock(10, 0, 0, 3)])
        ws = await open_session_socket(http, running.url, session_id, auth("host", "host-7"))
        frames, reader = collect(ws)
        await eventually(
            lambda: _true(sku_state(frames) == {"available": 10, "reserved": 0, "sold": 0}),
            what="the first snapshot's stock",
        )
        # Newer, then older, then one without a version (an older publisher), then an
        # outcome on the same key: once it is counted, everything before it was applied.
        rejected = {
            "order_id": str(uuid.uuid4()),
            "session_id": session_id,
            "sku": sku,
            "buyer_id": "b-1",
            "quantity": 1,
            "reason": "sold_out",
        }
        marker = event("reservation.rejected", rejected, source="test")
        await pub.publish_many(
            [
                stock(6, 3, 1, 5),
                stock(8, 2, 0, 4),
                stock(10, 0, 0, None),
                (topics.inventory, sku, marker),
            ]
        )
        await eventually(
            lambda: _true(frames.last and frames.last["totals"]["rejected_sold_out"] == 1),
            what="the marker counted",
        )
        assert sku_state(frames) == {"available": 6, "reserved": 3, "sold": 1}
        # A newer version still applies.
        await pub.publish_many([stock(5, 3, 2, 6)])
        await eventually(
            lambda: _true(sku_state(frames) == {"available": 5, "reserved": 3, "sold": 2}),
            what="the newest snapshot",
        )
        await ws.close()
        await stop_task(reader)


async def _rewind_group(settings: Settings, topics: Topics) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}notifier",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in (topics.orders, topics.inventory, topics.sessions, topics.picks)
            for partition in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions})
    finally:
        await consumer.stop()


async def _true(value: object) -> bool:
    return bool(value)
