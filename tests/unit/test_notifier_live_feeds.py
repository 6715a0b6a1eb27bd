"""Fan-out without Redis: one frame per change, latest-only outboxes, the rate limit."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from services.notifier.live_feeds import Outbox, SnapshotFeed, pump
from services.notifier.metrics import NotifierMetrics


def test_latest_only_outbox_keeps_the_newest_frame() -> None:
    outbox = Outbox(latest_only=True)
    assert outbox.offer(b"1")
    assert not outbox.offer(b"2"), "replacing an unsent frame is a drop"
    assert asyncio.run(outbox.next()) == b"2"


def test_fifo_outbox_closes_when_the_client_falls_behind() -> None:
    outbox = Outbox(latest_only=False, limit=2)
    assert outbox.offer(b"a") and outbox.offer(b"b")
    assert not outbox.offer(b"c")
    assert outbox.closed and outbox.close_code == 1013
    assert asyncio.run(outbox.next()) is None


async def test_a_tick_serializes_once_and_only_on_change() -> None:
    state: dict[str, Any] = {"session_id": "s1", "totals": {"attempts": 0}, "skus": {}}
    loads = 0

    async def load(keys: list[str]) -> dict[str, dict[str, Any]]:
        nonlocal loads
        loads += 1
        return {key: dict(state) for key in keys}

    feed = SnapshotFeed(
        kind="session_ws",
        frame_type="snapshot",
        load=load,
        metrics=NotifierMetrics.create(CollectorRegistry()),
    )
    a, b = await feed.subscribe("s1"), await feed.subscribe("s1")
    first_a, first_b = await a.next(), await b.next()
    assert first_a is first_b, "one serialized frame for every subscriber"
    await feed.tick("2026-11-28T12:00:00.000Z")
    assert not a._frames, "nothing changed, nothing sent"
    state["totals"] = {"attempts": 3}
    await feed.tick("2026-11-28T12:00:00.250Z")
    frame_a, frame_b = await a.next(), await b.next()
    assert frame_a is frame_b
    snapshot = orjson.loads(frame_a)
    assert snapshot["type"] == "snapshot" and snapshot["seq"] == 2
    assert snapshot["totals"] == {"attempts": 3}
    assert snapshot["at"] == "2026-11-28T12:00:00.250Z", "stamped with its tick's time"
    feed.unsubscribe("s1", a)
    feed.unsubscribe("s1", b)
    await feed.tick("2026-11-28T12:00:00.500Z")
    assert loads == 3, "no reads for a session nobody watches"


async def test_pump_sends_at_most_once_per_gap() -> None:
    outbox = Outbox(latest_only=True)
    sent: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()

    newest_sent = asyncio.Event()

    async def send(frame: bytes) -> None:
        sent.append((loop.time(), frame))
        if frame == b"29":
            newest_sent.set()

    task = asyncio.create_task(
        pump(outbox, send, min_gap_s=0.1, send_timeout_s=1, on_sent=lambda: None)
    )
    for i in range(30):
        outbox.offer(str(i).encode())
        await asyncio.sleep(0.01)  # offers arrive faster than the gap lets frames out
    async with asyncio.timeout(2):
        await newest_sent.wait()
    outbox.close()
    await task
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(sent)]
    assert all(gap >= 0.099 for gap in gaps), gaps
    assert sent[-1][1] == b"29", "the newest frame is the one that arrives"
    assert len(sent) <= 5
