"""Who may open the live views, refused where the contract says (before the upgrade,
or with close 1008 and no snapshot for first-message auth)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from services.common.kafka_topics import Topics
from services.notifier.app import create_app
from tests.conftest import auth, token
from tests.integration.test_notifier_support import Sale, open_session_socket, publisher

pytestmark = pytest.mark.integration


async def test_live_socket_refusals_and_first_message_auth(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier", allowed_origins=("https://studio.example",))
    running = await run_app(create_app, settings)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sale = Sale(Topics.with_prefix(settings.topic_prefix), session_id, "host-a", {"crab-9": 3})
    async with publisher(settings) as pub:
        await pub.publish_many(sale.session_updated() + sale.all_stock())
    live = f"{running.url}/v1/sessions/{session_id}/live"
    ws = await open_session_socket(http, running.url, session_id, auth("host", "host-a"))
    assert orjson.loads((await ws.receive()).data)["type"] == "snapshot"
    await ws.close()

    async def handshake_status(url: str, **kwargs: Any) -> int:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, **kwargs)
        return refused.value.status

    # Another session's host learns nothing: 404, like a session that does not exist.
    assert await handshake_status(live, headers=auth("host", "host-b")) == 404
    missing = f"{running.url}/v1/sessions/no-such-session/live"
    assert await handshake_status(missing, headers=auth("admin", "ops")) == 404
    # Any other role may not watch either: the same 404, not a 403 (DESIGN 4.5).
    for outsider in (
        auth("buyer", "b-1"),
        auth("warehouse", "staff-1", "wh-1"),
        auth("payments", "psp"),
    ):
        assert await handshake_status(live, headers=outsider) == 404
    assert await handshake_status(live, headers={"Authorization": "Bearer nonsense"}) == 401
    assert await handshake_status(missing, headers=auth("buyer", "b-1")) == 404
    # A page of another origin is refused before the upgrade; listed and same-origin pass.
    assert (
        await handshake_status(live, headers=auth("host", "host-a"), origin="https://evil.example")
        == 403
    )
    for origin in ("https://studio.example", running.url):
        ws = await http.ws_connect(live, headers=auth("host", "host-a"), origin=origin)
        assert orjson.loads((await ws.receive()).data)["type"] == "snapshot"
        await ws.close()

    # The SSE stream refuses the same way: 404 for every outsider, 401 without a token.
    events = f"{running.url}/v1/sessions/{session_id}/events"
    for outsider in (auth("host", "host-b"), auth("buyer", "b-1"), auth("warehouse", "s", "wh-1")):
        async with http.get(events, headers=outsider) as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/problem+json"
    async with http.get(events) as response:
        assert response.status == 401
    evil = {**auth("host", "host-a"), "Origin": "https://evil.example"}
    async with http.get(events, headers=evil) as response:
        assert response.status == 403

    # First-message auth: a good token gets the snapshot...
    ws = await http.ws_connect(live)
    await ws.send_str(orjson.dumps({"type": "auth", "token": token("host", "host-a")}).decode())
    assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "snapshot"
    await ws.close()
    # ...a bad one, another host's, or a message that is not auth: close 1008, no snapshot.
    for first in (
        {"type": "auth", "token": "not-a-jwt"},
        {"type": "auth", "token": token("host", "host-b")},
        {"type": "auth", "token": token("buyer", "b-1")},
        {"type": "hello"},
    ):
        ws = await http.ws_connect(live)
        await ws.send_str(orjson.dumps(first).decode())
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        assert ws.close_code == 1008
        await ws.close()

    # A client message over the size limit ends the connection.
    ws = await http.ws_connect(live, headers=auth("host", "host-a"))
    assert orjson.loads((await ws.receive()).data)["type"] == "snapshot"
    await ws.send_str("x" * 100_000)
    message = await ws.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()

    # Not a WebSocket request at all.
    async with http.get(live, headers=auth("host", "host-a")) as response:
        assert response.status == 426


async def test_warehouse_staff_see_only_their_warehouse(
    make_settings: Callable[..., Any], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    base = f"{running.url}/v1/warehouses/wh-hz"
    staff_sh = auth("warehouse", "staff-9", "wh-sh")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{base}/picks/live", headers=staff_sh)
    assert refused.value.status == 404
    async with http.get(f"{base}/picks", headers=staff_sh) as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/problem+json"
    async with http.get(f"{base}/picks", headers=auth("host", "h")) as response:
        assert response.status == 403
    async with http.get(f"{base}/picks") as response:
        assert response.status == 401
    async with http.get(f"{base}/picks", headers=auth("warehouse", "s", "wh-hz")) as response:
        assert response.status == 200
        assert await response.json() == {"picks": [], "next": None}
    # First-message auth with another warehouse's token: 1008.
    ws = await http.ws_connect(f"{base}/picks/live")
    await ws.send_str(
        orjson.dumps({"type": "auth", "token": token("warehouse", "s", "wh-sh")}).decode()
    )
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    await ws.close()
