"""Secrets never reach a log line: a small sale runs against the three services as
processes (debug logging), with good, forged, expired and malformed credentials on every
door (HTTP headers, a header the HTTP parser refuses, WebSocket header and first-message
auth, a garbled auth message), payments, a cancellation and a completed pick; then every
line the processes wrote is searched for the JWT secret, the trace secret, every token
used and every payment reference."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.common.auth import mint_token
from tests.conftest import Backends, new_prefix, settings_for, start_service_process, wait_ready
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

TRACE_SECRET = "trace-secret-" + uuid.uuid4().hex
SKU = "tea-longjing-logs"


async def test_no_secret_token_or_payment_ref_is_ever_logged(
    backends: Backends, tmp_path: Path
) -> None:
    prefix = new_prefix()
    procs = [
        start_service_process(
            settings_for(backends, prefix, name),
            tmp_path,
            LC_LOG_LEVEL="DEBUG",
            LC_TRACE_SECRET=TRACE_SECRET,
        )
        for name in ("live_orders", "inventory", "notifier")
    ]
    live_orders, inventory, notifier = procs
    jwt_secret = settings_for(backends, prefix, "notifier").jwt_secret
    tokens: list[str] = []

    def token(role: Any, sub: str, warehouse_id: str | None = None, ttl_s: int = 3600) -> str:
        minted = mint_token(jwt_secret, sub=sub, role=role, warehouse_id=warehouse_id, ttl_s=ttl_s)
        tokens.append(minted)
        return minted

    def bearer(value: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {value}"}

    payment_refs = [f"psp-{uuid.uuid4().hex}" for _ in range(3)]
    try:
        for proc in procs:
            await wait_ready(proc.url, proc=proc.proc)
        async with aiohttp.ClientSession() as http:

            async def call(
                method: str, url: str, headers: dict[str, str], body: Any = None
            ) -> tuple[int, Any]:
                async with http.request(method, url, headers=headers, json=body) as response:
                    raw = await response.read()
                    return response.status, orjson.loads(raw) if raw else None

            admin = bearer(token("admin", "ops"))
            host = bearer(token("host", "host-logs"))
            status, _ = await call(
                "PUT",
                f"{inventory.url}/v1/skus/{SKU}/lots/L1",
                admin,
                {"warehouse_id": "wh-logs", "quantity": 5},
            )
            assert status == 201
            status, session = await call(
                "POST", f"{live_orders.url}/v1/sessions", host, {"title": "logs"}
            )
            assert status == 201
            sid = session["session_id"]
            listing = {"sku": SKU, "title": "tea", "price_cents": 500, "per_user_limit": 1}
            assert (
                await call("POST", f"{live_orders.url}/v1/sessions/{sid}/listings", host, listing)
            )[0] == 201
            assert (await call("POST", f"{live_orders.url}/v1/sessions/{sid}/start", host))[
                0
            ] == 200

            orders = []
            for n in range(3):
                buyer = {**bearer(token("buyer", f"buyer-{n}")), "Idempotency-Key": f"k-{n}"}
                status, order = await call(
                    "POST",
                    f"{live_orders.url}/v1/sessions/{sid}/orders?wait=5",
                    buyer,
                    {"sku": SKU, "quantity": 1},
                )
                assert status == 201, order
                orders.append((order, buyer))
            payments = bearer(token("payments", "psp"))
            for (order, _), ref in zip(orders[:2], payment_refs, strict=False):
                pay = {"payment_ref": ref, "amount_cents": 500}
                status, paid = await call(
                    "POST",
                    f"{live_orders.url}/v1/orders/{order['order_id']}/payment?wait=5",
                    payments,
                    pay,
                )
                assert status == 200 and paid["status"] == "paid", paid
            # Another ref for a paid order (409), a cancel, a wrong amount (422).
            first = orders[0][0]["order_id"]
            again = {"payment_ref": payment_refs[2], "amount_cents": 500}
            assert (
                await call("POST", f"{live_orders.url}/v1/orders/{first}/payment", payments, again)
            )[0] == 409
            third, third_buyer = orders[2]
            wrong = {"payment_ref": payment_refs[2], "amount_cents": 1}
            assert (
                await call(
                    "POST",
                    f"{live_orders.url}/v1/orders/{third['order_id']}/payment",
                    payments,
                    wrong,
                )
            )[0] == 422
            assert (
                await call(
                    "POST", f"{live_orders.url}/v1/orders/{third['order_id']}/cancel", third_buyer
                )
            )[0] == 200

            # Refused credentials: forged (another secret), expired, a role that may not.
            forged = mint_token("x" * 40, sub="mallory", role="admin")
            expired = token("admin", "ops", ttl_s=-60)
            tokens += [forged]
            for bad in (forged, expired, "not.a.jwt", forged + "A"):
                tokens.append(bad)
                for url in (
                    f"{inventory.url}/v1/skus/{SKU}",
                    f"{notifier.url}/v1/leaderboard",
                    f"{live_orders.url}/v1/sessions/{sid}",
                ):
                    assert (await call("GET", url, bearer(bad)))[0] == 401
            assert (
                await call("GET", f"{inventory.url}/v1/skus/{SKU}", bearer(token("buyer", "nosy")))
            )[0] == 403

            # A header line the HTTP parser refuses, carrying a token.
            refused = token("admin", "ops")
            for proc in procs:
                host_port = proc.url.removeprefix("http://").split(":")
                reader, writer = await asyncio.open_connection(host_port[0], int(host_port[1]))
                header = f"Authorization: Bearer {refused}\x01\r\n"
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode())
                await writer.drain()
                answer = await reader.read(65536)
                writer.close()
                assert answer.split(b" ", 2)[1] == b"400", answer[:80]

            # WebSockets: header auth, first-message auth, forged and garbled auth messages.
            live = f"{notifier.url}/v1/sessions/{sid}/live"
            async with http.ws_connect(live, headers=host) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
            async with http.ws_connect(live) as ws:
                await ws.send_str(
                    orjson.dumps({"type": "auth", "token": token("host", "host-logs")}).decode()
                )
                assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
            for garbled in (
                orjson.dumps({"type": "auth", "token": forged}).decode(),
                orjson.dumps({"type": "auth", "token": [forged]}).decode(),
                f'{{"type": "auth", "token": "{token("host", "host-logs")}"',
            ):
                async with http.ws_connect(live) as ws:
                    await ws.send_str(garbled)
                    closing = await ws.receive(timeout=5)
                    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                    assert ws.close_code == 1008
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused_ws:
                await http.ws_connect(live, headers=bearer(forged))
            assert refused_ws.value.status == 401

            # The warehouse completes the paid picks; a buyer reads an order's trace.
            staff = bearer(token("warehouse", "staff-1", "wh-logs"))
            picks_url = f"{notifier.url}/v1/warehouses/wh-logs/picks"

            async def two_picks() -> bool:
                status, body = await call("GET", picks_url, staff)
                return status == 200 and len(body["picks"]) == 2

            await eventually(two_picks, what="both paid orders' picks")
            _, body = await call("GET", picks_url, staff)
            for pick in body["picks"]:
                status, _ = await call(
                    "POST", f"{notifier.url}/v1/picks/{pick['pick_id']}/complete", staff
                )
                assert status == 200
            order0, buyer0 = orders[0]

            async def traced() -> bool:
                status, body = await call(
                    "GET", f"{notifier.url}/v1/orders/{order0['order_id']}/trace", buyer0
                )
                return status == 200 and len(body["traces"]) == 1

            await eventually(traced, what="the paid order's trace")
    finally:
        for proc in procs:
            proc.stop()

    logs = {proc.name: proc.log.read_text(errors="replace") for proc in procs}
    for name, text in logs.items():
        assert '"msg":"starting"' in text, f"{name} logged nothing we can search"
    assert any(
        '"level":"DEBUG"' in text or "malformed request refused" in text for text in logs.values()
    )
    secrets = {"LC_JWT_SECRET": jwt_secret, "LC_TRACE_SECRET": TRACE_SECRET}
    secrets |= {f"token {i}": value for i, value in enumerate(tokens)}
    secrets |= {f"payment_ref {i}": value for i, value in enumerate(payment_refs)}
    # A token's signature alone is as good as a leak of the token.
    secrets |= {
        f"signature of token {i}": value.rsplit(".", 1)[-1]
        for i, value in enumerate(tokens)
        if value.count(".") == 2
    }
    leaks = [
        f"{what} in {name}'s log"
        for name, text in logs.items()
        for what, value in secrets.items()
        if len(value) >= 8 and value in text
    ]
    assert not leaks, leaks
