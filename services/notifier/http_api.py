"""The notifier's routes: live sockets, SSE, the pick queue, the leaderboard and pages.
Handlers translate HTTP to store and feed calls; rules live in `access`, `pick_queue`
and `projection`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from services.common.auth import Principal, bearer_token
from services.common.background import stop_tasks
from services.common.clock import now_rfc3339
from services.common.openapi import Operation, Param, Reply, describe, problem
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
    PICK_COMPLETION,
    PICK_FEED,
    PICK_STORE,
    PROJECTION,
    SESSION_FEED,
    TRACES,
)
from services.notifier.live_feeds import Outbox, pump
from services.notifier.pick_queue import group_waves, parse_list_query
from services.notifier.projection import check_pavilion, pavilion_listing, pavilion_statuses
from services.notifier.trace import is_trace_code

STATIC_DIR = Path(__file__).resolve().parent / "static"

FIRST_MESSAGE_AUTH_S = 5.0
CLIENT_MAX_MESSAGE_BYTES = 4096
# The pages send nothing after auth (pings are answered by aiohttp, not counted here): a
# client sending more than this many messages within a second is flooding, and is closed
# (1008) rather than let it keep the server reading and discarding.
CLIENT_MAX_MESSAGES_PER_S = 20
HEARTBEAT_S = 20.0
SEND_TIMEOUT_S = 10.0
SSE_KEEPALIVE_S = 10.0
POLICY_VIOLATION = 1008
LEADERBOARD_KEY = "top"
PAVILION_BOARD_PREFIX = "pavilion:"
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
    app.router.add_get("/v1/pavilions/{pavilion}/sessions", pavilion_sessions)
    app.router.add_get("/v1/trace/{trace_code}", trace)
    app.router.add_get("/v1/orders/{order_id}/trace", order_trace)
    app.router.add_get("/host/{session_id}", page("host.html"))
    app.router.add_get("/warehouse/{warehouse_id}", page("warehouse.html"))
    app.router.add_get("/leaderboard", page("leaderboard.html"))
    app.router.add_get("/trace/{trace_code}", trace_page)
    app.router.add_get("/assets/{filename}", asset)
    describe(app, OPERATIONS, ANSWER_SCHEMAS)


# ------------------------------------------------------------------ OpenAPI (/openapi.json)

_TEXT = {"type": "string"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_PICK = {
    "type": "object",
    "required": [
        "pick_id",
        "order_id",
        "warehouse_id",
        "sku",
        "quantity",
        "lot_code",
        "created_at",
        "trace_code",
        "status",
    ],
    "properties": {
        "pick_id": _TEXT,
        "order_id": _TEXT,
        "warehouse_id": _TEXT,
        "sku": _TEXT,
        "quantity": {"type": "integer", "minimum": 1},
        "lot_code": _TEXT,
        "created_at": _TEXT,
        "trace_code": _NULLABLE_TEXT,
        "status": {"enum": ["open", "done"]},
        "completed_at": _NULLABLE_TEXT,
        "completed_by": _NULLABLE_TEXT,
    },
}
_TRACE = {
    "type": "object",
    "required": ["trace_code", "sku", "quantity", "lot", "session", "paid_at", "picked_at"],
    "properties": {
        "trace_code": _TEXT,
        "sku": _TEXT,
        "quantity": {"type": "integer"},
        "lot": {"type": "object", "required": ["lot_code", "warehouse_id"]},
        "session": {"type": "object", "required": ["session_id", "title", "pavilion"]},
        "paid_at": _NULLABLE_TEXT,
        "picked_at": _NULLABLE_TEXT,
        "journal_head": _NULLABLE_TEXT,
    },
}
ANSWER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Pick": _PICK,
    "Picks": {
        "type": "object",
        "required": ["picks", "next"],
        "properties": {
            "picks": {"type": "array", "items": {"$ref": "#/components/schemas/Pick"}},
            "next": _NULLABLE_TEXT,
        },
    },
    "Waves": {
        "type": "object",
        "required": ["waves"],
        "properties": {
            "waves": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["wave_id", "sku", "lot_code", "quantity", "picks"],
                    "properties": {
                        "picks": {"type": "array", "items": {"$ref": "#/components/schemas/Pick"}}
                    },
                },
            }
        },
    },
    "Leaderboard": {
        "type": "object",
        "required": ["sessions"],
        "properties": {
            "sessions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["rank", "session_id", "gmv_cents", "paid_orders"],
                    "properties": {
                        "rank": {"type": "integer", "minimum": 1},
                        "session_id": _TEXT,
                        "gmv_cents": {"type": "integer"},
                        "paid_orders": {"type": "integer"},
                        "pavilion": _NULLABLE_TEXT,
                    },
                },
            },
            "at": _TEXT,
        },
    },
    "PavilionSessions": {
        "type": "object",
        "required": ["pavilion", "sessions"],
        "properties": {
            "pavilion": _TEXT,
            "sessions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["session_id", "title", "host_id", "status"],
                    "properties": {"status": {"enum": ["scheduled", "live", "ended"]}},
                },
            },
        },
    },
    "Trace": _TRACE,
    "OrderTrace": {
        "type": "object",
        "required": ["order_id", "traces"],
        "properties": {
            "order_id": _TEXT,
            "traces": {"type": "array", "items": {"$ref": "#/components/schemas/Trace"}},
        },
    },
}

_HTML = Reply("the page", {"type": "string"}, "text/html")
_WRONG_ROLE = problem("the caller's role may not do this")
_NOT_A_WATCHER = problem("no such session, or the caller may not watch it (any other role too)")
_NO_WAREHOUSE = problem("staff of another warehouse")
_BAD_QUERY = problem("a query parameter out of its range")
_SOCKET = {
    101: Reply("switching to the WebSocket protocol (frames: JSON text)"),
    403: problem("an Origin that is not allowed"),
    426: problem("not a WebSocket upgrade request", "Upgrade"),
}
_SOCKET_AUTH = (
    "Auth by the Authorization header (refusals are HTTP answers before the upgrade), or "
    'without it by a first message `{"type": "auth", "token": ...}` within 5 s (refusal: '
    "close 1008, nothing sent)."
)
_CODE = {"type": "string", "minLength": 1, "maxLength": 100}
_PAVILION = Param("pavilion", "query", {"type": "string"}, "only this pavilion's sessions")

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v1/sessions/{session_id}/live"): Operation(
        "A session's live snapshots (WebSocket)",
        {**_SOCKET, 401: problem("a bad token in the header"), 404: _NOT_A_WATCHER},
        roles=("host", "admin"),
        auth="header-or-first-message",
        websocket=True,
        description=_SOCKET_AUTH,
    ),
    ("GET", "/v1/sessions/{session_id}/events"): Operation(
        "A session's live snapshots (Server-Sent Events)",
        {
            200: Reply("an endless event stream", {"type": "string"}, "text/event-stream"),
            403: problem("an Origin that is not allowed"),
            404: _NOT_A_WATCHER,
        },
        roles=("host", "admin"),
    ),
    ("GET", "/v1/warehouses/{warehouse_id}/picks/live"): Operation(
        "A warehouse's open pick tasks, then each new one (WebSocket)",
        {
            **_SOCKET,
            401: problem("a bad token in the header"),
            403: problem("an Origin that is not allowed, or a role other than staff or admin"),
            404: _NO_WAREHOUSE,
        },
        roles=("warehouse", "admin"),
        auth="header-or-first-message",
        websocket=True,
        params=(Param("done", "query", {"enum": ["1"]}, "also send pick_done frames"),),
        description=_SOCKET_AUTH,
    ),
    ("GET", "/v1/warehouses/{warehouse_id}/picks"): Operation(
        "A warehouse's pick tasks, a page at a time",
        {200: Reply("a page", "Picks"), 400: _BAD_QUERY, 403: _WRONG_ROLE, 404: _NO_WAREHOUSE},
        roles=("warehouse", "admin"),
        params=(
            Param("status", "query", {"enum": ["open", "done"]}, "default open"),
            Param("limit", "query", {"type": "integer", "minimum": 1}, "default 500"),
            Param("after", "query", {"type": "string"}, "the `next` of the previous page"),
        ),
    ),
    ("GET", "/v1/warehouses/{warehouse_id}/waves"): Operation(
        "Open tasks grouped by sku and lot, soonest expiry first",
        {200: Reply("the waves", "Waves"), 403: _WRONG_ROLE, 404: _NO_WAREHOUSE},
        roles=("warehouse", "admin"),
    ),
    ("POST", "/v1/picks/{pick_id}/complete"): Operation(
        "Complete a pick task (idempotent)",
        {
            200: Reply("the task, done", "Pick"),
            403: _WRONG_ROLE,
            404: problem("no such pick task, or another warehouse's"),
        },
        roles=("warehouse", "admin"),
    ),
    ("GET", "/v1/leaderboard"): Operation(
        "The promotion contest, ranked by paid GMV",
        {200: Reply("the board", "Leaderboard"), 400: _BAD_QUERY},
        params=(
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "1-100"),
            _PAVILION,
        ),
    ),
    ("GET", "/v1/leaderboard/live"): Operation(
        "The leaderboard's frames (WebSocket)",
        {**_SOCKET, 400: _BAD_QUERY, 401: problem("a bad token in the header")},
        auth="header-or-first-message",
        websocket=True,
        params=(_PAVILION,),
        description=_SOCKET_AUTH,
    ),
    ("GET", "/v1/pavilions/{pavilion}/sessions"): Operation(
        "A pavilion's sessions",
        {200: Reply("the sessions", "PavilionSessions"), 400: _BAD_QUERY},
        params=(
            Param(
                "status",
                "query",
                {"enum": ["live", "scheduled", "ended", "all"]},
                "default: live and scheduled",
            ),
        ),
        path_params={"pavilion": {"type": "string", "minLength": 1}},
    ),
    ("GET", "/v1/trace/{trace_code}"): Operation(
        "The trace behind a box label (no token)",
        {200: Reply("the trace", "Trace"), 404: problem("no such trace code")},
        auth="none",
        path_params={"trace_code": _CODE},
    ),
    ("GET", "/v1/orders/{order_id}/trace"): Operation(
        "The traces of a paid order's boxes",
        {200: Reply("the traces", "OrderTrace"), 404: problem("no paid order of the caller's")},
        roles=("buyer", "admin"),
        description="Any other caller (also of another role) gets 404.",
    ),
    ("GET", "/host/{session_id}"): Operation(
        "The host dashboard (page; token in the URL fragment)", {200: _HTML}, auth="none"
    ),
    ("GET", "/warehouse/{warehouse_id}"): Operation(
        "The pick console (page; token in the URL fragment)", {200: _HTML}, auth="none"
    ),
    ("GET", "/leaderboard"): Operation("The leaderboard page", {200: _HTML}, auth="none"),
    ("GET", "/trace/{trace_code}"): Operation(
        "The trace as a phone page",
        {200: _HTML, 404: Reply("the unknown-code page", {"type": "string"}, "text/html")},
        auth="none",
        path_params={"trace_code": _CODE},
    ),
    ("GET", "/assets/{filename}"): Operation(
        "The pages' scripts and styles",
        {
            200: Reply(
                "the file",
                {"type": "string"},
                ("text/css", "text/javascript", "application/javascript"),
            ),
            404: problem("no such asset"),
        },
        auth="none",
        path_params={"filename": {"type": "string", "minLength": 1}},
    ),
}


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
    """The leaderboard's frames; `?pavilion=P`: only that pavilion's sessions."""
    key = leaderboard_key(_pavilion_query(request))
    ws, admitted = await open_live_socket(request, _anyone)
    if not admitted:
        return ws
    feed = request.app[LEADERBOARD_FEED]
    outbox = await feed.subscribe(key)
    try:
        await serve_socket(request, ws, outbox, kind=feed.kind, rate_limited=True)
    finally:
        feed.unsubscribe(key, outbox)
    return ws


def leaderboard_key(pavilion: str | None) -> str:
    """The leaderboard feed's key of a board: the whole one, or one pavilion's."""
    return LEADERBOARD_KEY if pavilion is None else PAVILION_BOARD_PREFIX + pavilion


def leaderboard_filter(key: str) -> str | None:
    """The pavilion a leaderboard feed key stands for (None: every session)."""
    return key.removeprefix(PAVILION_BOARD_PREFIX) if key != LEADERBOARD_KEY else None


def _pavilion_query(request: web.Request) -> str | None:
    pavilion = request.query.get("pavilion")
    if pavilion is None:
        return None
    try:
        return check_pavilion(pavilion)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


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
        window_started, received = time.monotonic(), 0
        async for _ in ws:
            now = time.monotonic()
            if now - window_started >= 1.0:
                window_started, received = now, 0
            received += 1
            if received > CLIENT_MAX_MESSAGES_PER_S:
                metrics.flood_disconnects.labels(kind).inc()
                await ws.close(code=POLICY_VIOLATION, message=b"too many client messages")
                break
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
    if request.method == "HEAD":
        # The headers only: a stream written after them would be read as the next answer.
        return response
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
    done = await request.app[PICK_COMPLETION].complete(task, who.sub)
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
    pavilion = _pavilion_query(request)
    board = await request.app[PROJECTION].leaderboard(limit, pavilion)
    return json_response({"sessions": board, "at": now_rfc3339()})


async def pavilion_sessions(request: web.Request) -> web.Response:
    """A pavilion's live and scheduled sessions (`?status=live|scheduled|ended|all`)."""
    principal(request)
    try:
        pavilion = check_pavilion(request.match_info["pavilion"])
        statuses = pavilion_statuses(request.query.get("status"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    sessions = await request.app[PROJECTION].pavilion_sessions(pavilion)
    return json_response(pavilion_listing(pavilion, sessions, statuses))


# ------------------------------------------------------------------ traceability


def _unknown_trace() -> ProblemError:
    # One answer for a malformed code and an unknown one: a prober learns nothing.
    return not_found("no such trace code")


async def trace(request: web.Request) -> web.Response:
    """The trace behind a box label: no token (the buyer scans the label)."""
    code = request.match_info["trace_code"]
    found = await request.app[TRACES].by_code(code) if is_trace_code(code) else None
    if found is None:
        raise _unknown_trace()
    return json_response(found, headers={"Cache-Control": "no-store"})


async def order_trace(request: web.Request) -> web.Response:
    """The traces of a paid order's boxes: its buyer or an admin; anyone else, and an
    order not paid (or unknown), 404."""
    who = principal(request)
    order_id = request.match_info["order_id"]
    traces = request.app[TRACES]
    buyer = await traces.order_buyer(order_id)
    if buyer is None or not (who.role == "admin" or (who.role == "buyer" and who.sub == buyer)):
        raise not_found("no such order")
    return json_response({"order_id": order_id, "traces": await traces.for_order(order_id)})


async def trace_page(request: web.Request) -> web.StreamResponse:
    """The trace as a phone page; an unknown or malformed code gets the 404 page."""
    code = request.match_info["trace_code"]
    found = await request.app[TRACES].by_code(code) if is_trace_code(code) else None
    if found is None:
        return _page_response("trace-unknown.html", status=404)
    return _page_response("trace.html")


# ------------------------------------------------------------------ pages


def page(filename: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page of static/: the token never travels in its URL (the page reads it from the
    fragment and sends it as the socket's first message)."""

    @open_route
    async def handler(_: web.Request) -> web.StreamResponse:
        return _page_response(filename)

    return handler


# The pages' scripts and styles, by name; nothing else of the folder (no pages, no dot
# files) is an asset.
ASSET_SUFFIXES = frozenset({".css", ".js"})


@open_route
async def asset(request: web.Request) -> web.StreamResponse:
    """A script or style of static/. aiohttp's static route answered a missing file with an
    empty 404 of no content type; here it is the problem+json every other 404 is."""
    name = request.match_info["filename"]
    path = STATIC_DIR / name
    if name.startswith(".") or path.suffix not in ASSET_SUFFIXES or not path.is_file():
        raise not_found("no such asset")
    return web.FileResponse(path)


def _page_response(filename: str, status: int = 200) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / filename,
        status=status,
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
