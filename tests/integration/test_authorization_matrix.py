"""Who may call what (DESIGN 4.2-4.6): every route of every service, walked from the
routers, against every kind of caller. A route without a row here fails.

Callers: no token; an expired, a foreign-secret and an `alg: none` token (all three for an
admin, the strongest role); each role; and the other owner (another buyer, another host,
another warehouse's staff). Cells are HTTP statuses; for WebSockets 101 is the upgrade (a
header token is checked before it), and 1008 a socket opened without a header whose
first message is no auth message: closed with 1008, nothing sent.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import WSMsgType, web

from bench.flash_sale import Endpoints, SaleClient
from services.common.auth import mint_token
from services.common.openapi import route_key
from services.common.settings import Settings
from services.inventory.app import create_app as create_inventory
from services.live_orders.app import create_app as create_live_orders
from services.notifier.app import create_app as create_notifier
from tests.conftest import JWT_SECRET, Backends, new_prefix, settings_for
from tests.integration.api_world import (
    BUYER,
    HOST,
    OTHER_BUYER,
    OTHER_HOST,
    OTHER_WAREHOUSE,
    PAVILION,
    PRICE_CENTS,
    WAREHOUSE,
    World,
    seed_world,
)

pytestmark = pytest.mark.integration

APPS: dict[str, Callable[[Settings], web.Application]] = {
    "inventory": create_inventory,
    "live_orders": create_live_orders,
    "notifier": create_notifier,
}

BAD_TOKENS = ("expired", "foreign_secret", "alg_none")
ROLES = ("buyer", "host", "warehouse", "payments", "admin")
OTHERS = ("other_buyer", "other_host", "other_warehouse")
CALLERS = ("none", *BAD_TOKENS, *ROLES, *OTHERS)


def _unsigned(claims: dict[str, Any]) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{b64(orjson.dumps(claims))}."


def caller_headers() -> dict[str, dict[str, str]]:
    soon = int(time.time()) + 3600
    tokens = {
        "expired": jwt.encode({"sub": "ops", "role": "admin", "exp": soon - 7200}, JWT_SECRET),
        "foreign_secret": mint_token("another-secret-" + "y" * 24, sub="ops", role="admin"),
        "alg_none": _unsigned({"sub": "ops", "role": "admin", "exp": soon}),
        "buyer": mint_token(JWT_SECRET, sub=BUYER, role="buyer"),
        "host": mint_token(JWT_SECRET, sub=HOST, role="host"),
        "warehouse": mint_token(
            JWT_SECRET, sub="staff-a", role="warehouse", warehouse_id=WAREHOUSE
        ),
        "payments": mint_token(JWT_SECRET, sub="psp", role="payments"),
        "admin": mint_token(JWT_SECRET, sub="ops", role="admin"),
        "other_buyer": mint_token(JWT_SECRET, sub=OTHER_BUYER, role="buyer"),
        "other_host": mint_token(JWT_SECRET, sub=OTHER_HOST, role="host"),
        "other_warehouse": mint_token(
            JWT_SECRET, sub="staff-b", role="warehouse", warehouse_id=OTHER_WAREHOUSE
        ),
    }
    return {"none": {}, **{k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}}


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    expect: dict[str, int]
    # Path parameters other than the world's defaults, by world attribute.
    params: dict[str, str] = field(default_factory=dict)
    body: Callable[[World], dict[str, Any]] | None = None
    query: str = ""
    headers: Callable[[], dict[str, str]] | None = None
    websocket: bool = False


def cells(
    allowed: int, *, who: tuple[str, ...] = (), others: int = 403, **exceptions: int
) -> dict[str, int]:
    """`allowed` for the callers in `who` (every role when empty), `others` for the rest of
    the authenticated callers, 401 without a valid token; then the exceptions."""
    table = {caller: 401 for caller in ("none", *BAD_TOKENS)}
    for caller in (*ROLES, *OTHERS):
        role = caller.removeprefix("other_")
        table[caller] = allowed if not who or role in who else others
    return {**table, **exceptions}


def public(status: int = 200) -> dict[str, int]:
    return dict.fromkeys(CALLERS, status)


def _unique_listing(world: World) -> dict[str, Any]:
    return {
        "sku": f"tea-{uuid.uuid4().hex[:8]}",
        "title": "Tea",
        "price_cents": 1,
        "per_user_limit": 1,
    }


def _new_key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


PLATFORM = {
    ("GET", "/healthz"): Row(public()),
    ("GET", "/readyz"): Row(public()),
    ("GET", "/metrics"): Row(public()),
    ("GET", "/openapi.json"): Row(public()),
}
SOCKET = {"none": 1008}

TABLE: dict[str, dict[tuple[str, str], Row]] = {
    "live_orders": {
        **PLATFORM,
        ("POST", "/v1/sessions/{session_id}/orders"): Row(
            cells(201, who=("buyer",)),
            body=lambda w: {"sku": w.sku, "quantity": 1},
            query="?wait=10",
            headers=_new_key,
        ),
        ("POST", "/v1/sessions"): Row(
            # A host naming another host is 403 (docs/api.md).
            cells(201, who=("host", "admin"), other_host=403),
            body=lambda _: {"title": "More crabs", "host_id": HOST},
        ),
        ("GET", "/v1/sessions/{session_id}"): Row(cells(200)),
        ("POST", "/v1/sessions/{session_id}/start"): Row(
            cells(200, who=("host", "admin"), other_host=404),
            params={"session_id": "scheduled_session_id"},
        ),
        ("POST", "/v1/sessions/{session_id}/end"): Row(
            cells(200, who=("host", "admin"), other_host=404),
            params={"session_id": "ending_session_id"},
        ),
        ("POST", "/v1/sessions/{session_id}/listings"): Row(
            cells(201, who=("host", "admin"), other_host=404), body=_unique_listing
        ),
        ("GET", "/v1/orders/{order_id}"): Row(
            cells(200, who=("buyer", "admin"), other_buyer=404),
            params={"order_id": "reserved_order_id"},
        ),
        ("POST", "/v1/orders/{order_id}/payment"): Row(
            cells(200, who=("payments", "admin")),
            params={"order_id": "paid_order_id"},
            body=lambda w: {"payment_ref": w.payment_ref, "amount_cents": PRICE_CENTS},
        ),
        ("POST", "/v1/orders/{order_id}/cancel"): Row(
            cells(200, who=("buyer", "admin"), other_buyer=404),
            params={"order_id": "reserved_order_id"},
        ),
    },
    "inventory": {
        **PLATFORM,
        ("PUT", "/v1/skus/{sku}/lots/{lot_code}"): Row(
            cells(200, who=("admin",)),
            body=lambda w: {"warehouse_id": WAREHOUSE, "quantity": w.lot_quantity},
        ),
        ("GET", "/v1/skus/{sku}"): Row(cells(200, who=("admin", "host"))),
        ("GET", "/v1/skus/{sku}/lots/{lot_code}/journal"): Row(cells(200, who=("admin", "host"))),
        ("GET", "/v1/skus/{sku}/lots/{lot_code}/journal/verify"): Row(
            cells(200, who=("admin", "host"))
        ),
    },
    "notifier": {
        **PLATFORM,
        # DESIGN 4.5: anyone who may not watch the session gets 404, whatever the role.
        ("GET", "/v1/sessions/{session_id}/live"): Row(
            cells(101, who=("host", "admin"), others=404, other_host=404, **SOCKET),
            websocket=True,
        ),
        ("GET", "/v1/sessions/{session_id}/events"): Row(
            cells(200, who=("host", "admin"), others=404, other_host=404)
        ),
        ("GET", "/v1/warehouses/{warehouse_id}/picks/live"): Row(
            cells(101, who=("warehouse", "admin"), other_warehouse=404, **SOCKET),
            websocket=True,
        ),
        ("GET", "/v1/warehouses/{warehouse_id}/picks"): Row(
            cells(200, who=("warehouse", "admin"), other_warehouse=404)
        ),
        ("GET", "/v1/warehouses/{warehouse_id}/waves"): Row(
            cells(200, who=("warehouse", "admin"), other_warehouse=404)
        ),
        ("POST", "/v1/picks/{pick_id}/complete"): Row(
            cells(200, who=("warehouse", "admin"), other_warehouse=404)
        ),
        ("GET", "/v1/leaderboard"): Row(cells(200)),
        ("GET", "/v1/leaderboard/live"): Row(cells(101, **SOCKET), websocket=True),
        ("GET", "/v1/pavilions/{pavilion}/sessions"): Row(cells(200)),
        ("GET", "/v1/trace/{trace_code}"): Row(public()),
        # Any caller but its buyer and admins: 404 (also other roles).
        ("GET", "/v1/orders/{order_id}/trace"): Row(
            cells(200, who=("buyer", "admin"), others=404, other_buyer=404),
            params={"order_id": "paid_order_id"},
        ),
        ("GET", "/host/{session_id}"): Row(public()),
        ("GET", "/warehouse/{warehouse_id}"): Row(public()),
        ("GET", "/leaderboard"): Row(public()),
        ("GET", "/trace/{trace_code}"): Row(public()),
        ("GET", "/assets/{filename}"): Row(public()),
    },
}


def _head_of(row: Row) -> Row:
    """HEAD answers as GET does, without a body; a WebSocket route, which needs a GET
    upgrade, answers HEAD 426 to everyone."""
    if row.websocket:
        return Row(public(426), params=row.params)
    return Row(row.expect, params=row.params, query=row.query, headers=row.headers)


NOWHERE = Backends("127.0.0.1:1", "redis://127.0.0.1:1/0", 1, Path("/nonexistent"))


def routes() -> list[tuple[str, str, str]]:
    """(service, method, path) of every route, from the routers of the apps as built."""
    found = []
    for service, create in APPS.items():
        app = create(settings_for(NOWHERE, "t.", service))
        found += [(service, *route_key(route)) for route in app.router.routes()]
    return found


def row_of(service: str, method: str, path: str) -> Row | None:
    table = TABLE[service]
    if method == "HEAD" and ("HEAD", path) not in table and ("GET", path) in table:
        return _head_of(table[("GET", path)])
    return table.get((method, path))


def test_the_table_names_only_routes_that_exist() -> None:
    served = {(s, m, p) for s, m, p in routes()}
    stale = [(s, m, p) for s, rows in TABLE.items() for m, p in rows if (s, m, p) not in served]
    assert not stale, f"rows for routes no service serves: {stale}"


# ------------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    urls: dict[str, str]
    world: World
    http: aiohttp.ClientSession
    callers: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
async def stack(backends: Backends) -> AsyncIterator[Stack]:
    prefix = new_prefix()
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    for name, create in APPS.items():
        settings = settings_for(backends, prefix, name)
        runner = web.AppRunner(create(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.http_port).start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{settings.http_port}"
    # One connection per request: an SSE answer stays open after its status is read.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    try:
        client = SaleClient(
            http, Endpoints(urls["live_orders"], urls["inventory"], urls["notifier"], JWT_SECRET)
        )
        world = await seed_world(client, urls["notifier"])
        yield Stack(urls, world, http, caller_headers())
    finally:
        await http.close()
        for runner in reversed(runners):
            await runner.cleanup()


def _path(path: str, row: Row, world: World) -> str:
    values = {
        "session_id": world.session_id,
        "order_id": world.reserved_order_id,
        "sku": world.sku,
        "lot_code": world.lot_code,
        "warehouse_id": WAREHOUSE,
        "pick_id": world.pick_id,
        "pavilion": PAVILION,
        "trace_code": world.trace_code,
        "filename": "host.css",
    }
    for name, attribute in row.params.items():
        values[name] = getattr(world, attribute)
    return path.format(**values)


async def _status(stack: Stack, url: str, method: str, row: Row, caller: str) -> int:
    headers = {**stack.callers[caller], **(row.headers() if row.headers else {})}
    if row.websocket and method == "GET":
        return await _socket_status(stack.http, url, headers)
    body = row.body(stack.world) if row.body else None
    timeout = aiohttp.ClientTimeout(total=20)
    async with stack.http.request(
        method, url, headers=headers, json=body, timeout=timeout
    ) as response:
        if response.status >= 400 and method != "HEAD":
            assert response.content_type == "application/problem+json" or url.endswith(".html"), (
                url,
                caller,
                response.status,
                response.content_type,
            )
        return response.status


async def _socket_status(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    try:
        ws = await http.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(10))
    except aiohttp.WSServerHandshakeError as refused:
        return refused.status
    async with ws:
        if headers:
            return 101
        # No header: the first message must authenticate; this one does not.
        await ws.send_str('{"type": "hello"}')
        message = await ws.receive(timeout=10)
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), message
        return ws.close_code or 0


@pytest.mark.parametrize(("service", "method", "path"), routes())
async def test_who_may_call_what(stack: Stack, service: str, method: str, path: str) -> None:
    row = row_of(service, method, path)
    assert row is not None, f"{service} {method} {path} has no row in TABLE: add one"
    assert set(row.expect) == set(CALLERS), f"{method} {path}: a cell per caller"
    url = stack.urls[service] + _path(path, row, stack.world) + row.query
    got = {caller: await _status(stack, url, method, row, caller) for caller in CALLERS}
    wrong = {
        c: f"got {got[c]}, expected {row.expect[c]}" for c in CALLERS if got[c] != row.expect[c]
    }
    assert not wrong, f"{service} {method} {path}: {wrong}"
