"""The live sockets under abuse: an oversized message, a flood of messages, no auth at all,
and a thousand clients connecting and leaving. Each ends the offender's socket (or costs
nothing), never the server's memory or anyone else's view."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.common.kafka_topics import Topics
from services.notifier.app import create_app
from services.notifier.http_api import (
    CLIENT_MAX_MESSAGE_BYTES,
    CLIENT_MAX_MESSAGES_PER_S,
    HEARTBEAT_S,
)
from tests.conftest import (
    Backends,
    ServiceProcess,
    auth,
    new_prefix,
    settings_for,
    start_service_process,
    wait_ready,
)
from tests.integration.test_notifier_support import Sale, open_session_socket, publisher
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HOST = "host-abuse"


async def live_session(settings: Any) -> str:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sale = Sale(Topics.with_prefix(settings.topic_prefix), session_id, HOST, {"crab-ab": 3})
    async with publisher(settings) as pub:
        await pub.publish_many(sale.session_updated() + sale.all_stock())
    return session_id


async def snapshot_of(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=10)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    frame: dict[str, Any] = orjson.loads(message.data)
    return frame


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; its close code."""
    while True:
        message = await ws.receive(timeout=10)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code


async def test_an_oversized_message_or_a_flood_ends_only_that_socket(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    session_id = await live_session(settings)
    headers = auth("host", HOST)
    bystander = await open_session_socket(http, running.url, session_id, headers)
    assert (await snapshot_of(bystander))["type"] == "snapshot"

    big = await open_session_socket(http, running.url, session_id, headers)
    await snapshot_of(big)
    await big.send_str("x" * (CLIENT_MAX_MESSAGE_BYTES + 1))
    assert await closed_with(big) == 1009  # message too big

    flood = await open_session_socket(http, running.url, session_id, headers)
    await snapshot_of(flood)
    for _ in range(CLIENT_MAX_MESSAGES_PER_S * 3):
        if flood.closed:
            break
        await flood.send_str('{"type":"noise"}')
    assert await closed_with(flood) == 1008

    # A page's pace (a message now and then) is fine, and the bystander still has its view.
    polite = await open_session_socket(http, running.url, session_id, headers)
    await snapshot_of(polite)
    for _ in range(3):
        await polite.send_str('{"type":"hello"}')
    assert not polite.closed
    assert not bystander.closed
    await polite.close()
    await bystander.close()


async def test_a_socket_that_never_authenticates_is_closed_after_5_s(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    session_id = await live_session(settings)
    started = time.monotonic()
    async with http.ws_connect(f"{running.url}/v1/sessions/{session_id}/live") as ws:
        message = await ws.receive(timeout=10)
        waited = time.monotonic() - started
        # Closed with 1008 and nothing sent: no snapshot came before the close.
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        assert ws.close_code == 1008
    assert 4.5 <= waited <= 8, waited


@pytest.fixture
async def notifier_process(
    backends: Backends, tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, Any]]:
    settings = settings_for(backends, new_prefix(), "notifier")
    process = start_service_process(settings, tmp_path)
    try:
        await wait_ready(process.url, proc=process.proc)
        yield process, settings
    finally:
        process.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_thousand_connects_and_leaves_keep_the_notifier_flat(
    notifier_process: tuple[ServiceProcess, Any], http: aiohttp.ClientSession
) -> None:
    process, settings = notifier_process
    session_id = await live_session(settings)
    headers = auth("host", HOST)
    first = await open_session_socket(http, process.url, session_id, headers)
    await first.close()

    async def cycles(count: int) -> None:
        url = f"{process.url}/v1/sessions/{session_id}/live"
        for n in range(count):
            async with http.ws_connect(url, headers=headers) as ws:
                if n % 2:  # half read their snapshot, half leave at once
                    await snapshot_of(ws)

    async def clients_gone() -> bool:
        async with http.get(f"{process.url}/metrics") as response:
            text = await response.text()
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('lc_notifier_clients{kind="session_ws"}')
        ]
        return values == [0.0]

    # Warm-up: allocator pools, caches, the first frames. The memory of a closed socket
    # is reused only some seconds after it closed (about the heartbeat interval, 20 s), so
    # a fast burst of leaves grows the heap once (measured: +8 to +20 MiB over 4,000
    # cycles in 10 s), and that heap then serves every later burst.
    await cycles(3000)
    await eventually(clients_gone, what="every client unregistered")
    await asyncio.sleep(HEARTBEAT_S + 5)  # the release interval itself, not a readiness wait
    before = rss_kib(process.proc.pid)
    await cycles(1000)
    await eventually(clients_gone, what="every client unregistered")
    after = rss_kib(process.proc.pid)
    print(f"\nnotifier RSS: {before} KiB after 3,000 cycles, {after} KiB after 1,000 more")
    assert after - before < 2 * 1024, f"RSS grew {after - before} KiB over 1,000 cycles"
