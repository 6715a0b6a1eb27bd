"""The notifier's routes: live sockets, SSE, the pick queue, the leaderboard and pages.
Handlers translate HTTP to store and feed calls; rules live in `access`, `pick_queue`
and `projection`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from services.common.auth import Principal, bearer_token
from services.common.background import stop_tasks
from services.common.clock import now_rfc3339
from services.common.problems import ProblemError, bad_request, json_response, not_found
from services.common.web_app import SETTINGS, VERIFIER, open_route, principal
from services.notifier.access import (
    check_origin,
    require_session_watcher,
    require_warehouse_staff,
)
from services.notifier.app_keys import (
    LEADERBOARD_FEED,
    NOTIFIER_METRICS,
    PICK_FEED,
    PICK_STORE,
    PROJECTION,
    SESSION_FEED,
)
from services.notifier.live_feeds import Outbox, pump
from services.notifier.pick_queue import group_waves, parse_list_query

STATIC_DIR = Path(__file__).resolve().parent / "static"

FIRST_MESSAGE_AUTH_S = 5.0
CLIENT_MAX_MESSAGE_BYTES = 4096
HEARTBEAT_S = 20.0
SEND_TIMEOUT_S = 10.0
SSE_KEEPALIVE_S = 10.0
POLICY_VIOLATION = 1008
LEADERBOARD_KEY = "top"
LEADERBOARD_SIZE = 20

Authorizer = Callable[[Principal], Awaitable[None]]


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/sessions/{session_id}/live", session_live)
    app.router.add_get("/v1/sessions/{session_id}/events", session_events)
    app.router.add_get("/v1/warehouses/{warehouse_id}/picks/live", picks_live)
    app.router.add_get("/v1/warehouses/{warehouse_id}/picks", picks_list)
    app.router.add_get("/v1/warehouses/{warehouse_id}/waves", waves_list)
    app.router.add_post("/v1/picks/{pick_id}/complete", pick_complete)
    app.router.add_get("/v1/leaderboard", leaderboard)
    app.router.add_get("/v1/leaderboard/live", leaderboard_live)
    app.router.add_get("/host/{session_id}", page("host.html"))
    app.router.add_get("/warehouse/{warehouse_id}", page("warehouse.html"))
    app.router.add_get("/leaderboard", page("leaderboard.html"))
    app.router.add_static("/assets/", STATIC_DIR, append_version=False)


# ------------------------------------------------------------------ live sockets


def _session_authorizer(request: web.Request) -> Authorizer:
    session_id = request.match_info["session_id"]
    projection = request.app[PROJECTION]

    async def authorize(who: Principal) -> None:
        await require_session_watcher(who, session_id, projection)

    return authorize


def _warehouse_authorizer(request: web.Request) -> Authorizer:
    warehouse_id = request.match_info["warehouse_id"]

    async def authorize(who: Principal) -> None:
        require_warehouse_staff(who, warehouse_id)

    return authorize


async def _anyone(_: Principal) -> None:
    return None


@open_route
async def session_live(request: web.Request) -> web.StreamResponse:
    ws, admitted = await open_live_socket(request, _session_authorizer(request))
    if not admitted:
        return ws
    session_id = request.match_info["session_id"]
    feed = request.app[SESSION_FEED]
    outbox = await feed.subscribe(session_id)
    try:
        await serve_socket(request, ws, outbox, kind=feed.kind, rate_limited=True)
    finally:
        feed.unsubscribe(session_id, outbox)
    return ws


@open_route
async def picks_live(request: web.Request) -> web.StreamResponse:
    ws, admitted = await open_live_socket(request, _warehouse_authorizer(request))
    if not admitted:
        return ws
    warehouse_id = request.match_info["warehouse_id"]
    feed = request.app[PICK_FEED]
    # `?done=1`: also `{"type": "pick_done", "pick_id"}` when any console completes a task.
    outbox = await feed.subscribe(warehouse_id, with_done=request.query.get("done") == "1")
    try:
        await serve_socket(request, ws, outbox, kind=feed.kind, rate_limited=False)
    finally:
        feed.unsubscribe(warehouse_id, outbox)
    return ws


@open_route
async def leaderboard_live(request: web.Request) -> web.StreamResponse:
    ws, admitted = await open_live_socket(request, _anyone)
    if not admitted:
        return ws
    feed = request.app[LEADERBOARD_FEED]
    outbox = await feed.subscribe(LEADERBOARD_KEY)
    try:
        await serve_socket(request, ws, outbox, kind=feed.kind, rate_limited=True)
    finally:
        feed.unsubscribe(LEADERBOARD_KEY, outbox)
    return ws


async def open_live_socket(
    request: web.Request, authorize: Authorizer
) -> tuple[web.WebSocketResponse, bool]:
    """Origin, upgrade and auth checks. With an `Authorization` header every refusal is an
    HTTP answer before the upgrade (401, 403, 404); without one the socket opens and the
    first message must be `{"type": "auth", "token": ...}` within 5 s, else it is closed
    with 1008 and nothing sent. Returns the socket and whether the caller was admitted."""
    settings = request.app[SETTINGS]
    check_origin(request, settings.allowed_origins)
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S,
        max_msg_size=CLIENT_MAX_MESSAGE_BYTES,
        compress=False,  # deflate would cost CPU per subscriber for a frame built once
        timeout=2.0,
    )
    if not ws.can_prepare(request).ok:
        raise ProblemError(
            426,
            "Upgrade Required",
            "this is a WebSocket endpoint",
            headers={"Upgrade": "websocket"},
        )
    token = bearer_token(request)
    if token is not None:
        await authorize(request.app[VERIFIER].verify(token))
        await ws.prepare(request)
        return ws, True
    await ws.prepare(request)
    try:
        message = await ws.receive(timeout=FIRST_MESSAGE_AUTH_S)
        await authorize(
            request.app[VERIFIER].verify(_auth_message_token(message.type, message.data))
        )
    except TimeoutError:
        await ws.close(code=POLICY_VIOLATION, message=b"no auth message within 5 s")
        return ws, False
    except ProblemError as refused:
        await ws.close(code=POLICY_VIOLATION, message=refused.title.encode()[:120])
        return ws, False
    return ws, not ws.closed


def _auth_message_token(kind: WSMsgType, data: Any) -> str:
    if kind != WSMsgType.TEXT:
        raise ProblemError(401, "Unauthorized", "the first message must be an auth message")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        message = None
    if (
        not isinstance(message, dict)
        or message.get("type") != "auth"
        or not isinstance(message.get("token"), str)
    ):
        raise ProblemError(401, "Unauthorized", "the first message must be an auth message")
    return str(message["token"])


async def serve_socket(
    request: web.Request,
    ws: web.WebSocketResponse,
    outbox: Outbox,
    *,
    kind: str,
    rate_limited: bool,
) -> None:
    """Send the outbox until it or the client closes. Client messages after auth are read
    (so pings, closes and the size limit are handled) and otherwise ignored."""
    metrics = request.app[NOTIFIER_METRICS]

    async def read_until_closed() -> None:
        async for _ in ws:
            pass
        outbox.close()

    async def send(frame: bytes) -> None:
        await ws.send_frame(frame, WSMsgType.TEXT)

    reader = asyncio.create_task(read_until_closed())
    try:
        await pump(
            outbox,
            send,
            min_gap_s=request.app[SETTINGS].push_interval_s if rate_limited else 0.0,
            send_timeout_s=SEND_TIMEOUT_S,
            on_sent=metrics.frames_sent.labels(kind).inc,
        )
    except TimeoutError:
        metrics.slow_disconnects.labels(kind).inc()
    except ConnectionError:
        pass
    finally:
        if outbox.close_code == 1013 and not ws.closed:
            metrics.slow_disconnects.labels(kind).inc()
        await stop_tasks(reader)
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.close(code=outbox.close_code, message=outbox.close_reason.encode()[:120])


# ------------------------------------------------------------------ SSE


async def session_events(request: web.Request) -> web.StreamResponse:
    """The session's snapshots as Server-Sent Events (`data: <snapshot JSON>`)."""
    check_origin(request, request.app[SETTINGS].allowed_origins)
    who = principal(request)
    session_id = request.match_info["session_id"]
    await require_session_watcher(who, session_id, request.app[PROJECTION])
    feed = request.app[SESSION_FEED]
    metrics = request.app[NOTIFIER_METRICS]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    outbox = await feed.subscribe(session_id)
    metrics.clients.labels("session_sse").inc()

    async def send(frame: bytes) -> None:
        await response.write(b"data: " + frame + b"\n\n")

    async def keepalive() -> None:
        # Comments keep proxies from timing the stream out, and find a gone client.
        while True:
            await asyncio.sleep(SSE_KEEPALIVE_S)
            try:
                await response.write(b": keepalive\n\n")
            except ConnectionError:
                outbox.close()
                return

    beat = asyncio.create_task(keepalive())
    try:
        await pump(
            outbox,
            send,
            min_gap_s=request.app[SETTINGS].push_interval_s,
            send_timeout_s=SEND_TIMEOUT_S,
            on_sent=metrics.frames_sent.labels("session_sse").inc,
        )
    except (TimeoutError, ConnectionError):
        pass
    finally:
        await stop_tasks(beat)
        feed.unsubscribe(session_id, outbox)
        metrics.clients.labels("session_sse").dec()
    return response


# ------------------------------------------------------------------ pick queue


async def picks_list(request: web.Request) -> web.Response:
    warehouse_id = request.match_info["warehouse_id"]
    require_warehouse_staff(principal(request), warehouse_id)
    try:
        status, limit, after = parse_list_query(request.query)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    tasks, next_cursor = await request.app[PICK_STORE].page(warehouse_id, status, after, limit)
    return json_response(
        {
            "picks": [task.listing() for task in tasks],
            "next": str(next_cursor) if next_cursor is not None else None,
        }
    )


async def waves_list(request: web.Request) -> web.Response:
    """Open tasks grouped for batch picking: one wave per SKU and lot, soonest expiry first."""
    warehouse_id = request.match_info["warehouse_id"]
    require_warehouse_staff(principal(request), warehouse_id)
    _, tasks = await request.app[PICK_STORE].open_snapshot(warehouse_id, None)
    return json_response({"waves": [wave.document() for wave in group_waves(tasks)]})


async def pick_complete(request: web.Request) -> web.Response:
    who = principal(request, "warehouse", "admin")
    store = request.app[PICK_STORE]
    task = await store.get(request.match_info["pick_id"])
    if task is None or (who.role == "warehouse" and task.warehouse_id != who.warehouse_id):
        raise not_found("no such pick task")
    done = await store.complete(task, now_rfc3339(), who.sub)
    return json_response(done.listing())


# ------------------------------------------------------------------ leaderboard


async def leaderboard(request: web.Request) -> web.Response:
    principal(request)
    try:
        limit = int(request.query.get("limit", LEADERBOARD_SIZE))
    except ValueError:
        raise bad_request("limit must be an integer") from None
    if not 1 <= limit <= 100:
        raise bad_request("limit must be between 1 and 100")
    board = await request.app[PROJECTION].leaderboard(limit)
    return json_response({"sessions": board, "at": now_rfc3339()})


# ------------------------------------------------------------------ pages


def page(filename: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page of static/: the token never travels in its URL (the page reads it from the
    fragment and sends it as the socket's first message)."""

    @open_route
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC_DIR / filename,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": (
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
                ),
            },
        )

    return handler
