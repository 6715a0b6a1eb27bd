"""SIGKILL one of two live_orders processes in the middle of a 开抢 burst.

Buyers whose request met the dying process (a connection reset, no answer) press again
with the same Idempotency-Key, now on the survivor, as a client behind a load balancer
would. Orders the dead process stored but never published are published by the
survivor's outbox sweep, with no retry needed. Afterwards every key names one order,
every order is decided, the stock counts each reserved order once, and the log and the
stores agree.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from services.common.auth import mint_token
from services.common.settings import Settings
from tests.conftest import JWT_SECRET, ServiceProcess, wait_ready
from tests.reconciling import reconciled
from tests.waiting import eventually

pytestmark = pytest.mark.chaos

STOCK = 300
LIMIT = 1
BUYERS = 900
SKU = "crab-kill-lo"


def bearer(role: str, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(JWT_SECRET, sub=sub, role=role)}"}


async def test_sigkill_of_a_live_orders_process_mid_burst_loses_nothing(
    make_settings: Callable[..., Settings],
    service_processes: Callable[..., ServiceProcess],
) -> None:
    doomed, survivor = (service_processes(make_settings("live_orders")) for _ in range(2))
    inventory = service_processes(make_settings("inventory"))
    for proc in (doomed, survivor, inventory):
        await wait_ready(proc.url, proc=proc.proc)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    ) as http:

        async def call(method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
            async with http.request(method, url, headers=headers, json=body) as response:
                return response.status, await response.json(content_type=None)

        admin = bearer("admin", "ops")
        lot = {"warehouse_id": "wh-1", "quantity": STOCK}
        assert (await call("PUT", f"{inventory.url}/v1/skus/{SKU}/lots/L1", admin, lot))[0] == 201
        host = bearer("host", "host-kl")
        status, session = await call("POST", f"{survivor.url}/v1/sessions", host, {"title": "t"})
        assert status == 201
        sid = session["session_id"]
        listing = {"sku": SKU, "title": "crab", "price_cents": 100, "per_user_limit": LIMIT}
        await call("POST", f"{survivor.url}/v1/sessions/{sid}/listings", host, listing)
        assert (await call("POST", f"{survivor.url}/v1/sessions/{sid}/start", host))[0] == 200

        killed = asyncio.Event()
        pressed = 0
        pressed_again: Counter[str] = Counter()

        async def press(n: int) -> tuple[int, Any]:
            nonlocal pressed
            headers = {**bearer("buyer", f"b{n}"), "Idempotency-Key": f"k{n}"}
            body = {"sku": SKU, "quantity": 1}
            # Odd buyers reach the process that is about to die.
            url = (doomed if n % 2 else survivor).url
            while True:
                try:
                    answer = await call(
                        "POST", f"{url}/v1/sessions/{sid}/orders?wait=5", headers, body
                    )
                    if answer[0] < 500:
                        return answer
                    pressed_again[f"status {answer[0]}"] += 1
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                    pressed_again[type(exc).__name__] += 1
                finally:
                    pressed += 1
                    if pressed >= BUYERS // 10 and not killed.is_set():
                        doomed.kill()
                        killed.set()
                url = survivor.url  # the balancer now sends this buyer elsewhere

        gate = asyncio.Semaphore(150)

        async def buyer(n: int) -> tuple[int, Any]:
            async with gate:
                return await press(n)

        answers = await asyncio.gather(*(buyer(n) for n in range(BUYERS)))
        assert killed.is_set() and doomed.proc.returncode == -9
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {201, 202, 409}, statuses

        # Each key names one order of its buyer; every order gets decided (the outbox
        # sweep publishes what the dead process stored but never sent, after 10 s).
        async def decided(n: int) -> dict[str, Any]:
            headers = {**bearer("buyer", f"b{n}"), "Idempotency-Key": f"k{n}"}
            status, order = await call(
                "POST",
                f"{survivor.url}/v1/sessions/{sid}/orders?wait=0",
                headers,
                {"sku": SKU, "quantity": 1},
            )
            assert status in (200, 201, 202, 409), (status, order)
            order_url = f"{survivor.url}/v1/orders/{order['order_id']}?wait=10"
            for _ in range(4):
                status, order = await call("GET", order_url, bearer("buyer", f"b{n}"))
                assert status == 200
                if order["status"] != "pending":
                    break
            return dict(order)

        orders = await asyncio.gather(*(decided(n) for n in range(BUYERS)))
        for (_, first), order in zip(answers, orders, strict=True):
            if isinstance(first, dict) and "order_id" in first:
                assert first["order_id"] == order["order_id"]
        states = Counter(order["status"] for order in orders)
        print(f"\nanswers {dict(statuses)}; pressed again after the kill {dict(pressed_again)}")
        assert "pending" not in states, states
        assert states["reserved"] == STOCK

        async def stock_settled() -> bool:
            status, stock = await call("GET", f"{inventory.url}/v1/skus/{SKU}", admin)
            return status == 200 and stock["reserved"] == STOCK and stock["available"] == 0

        await eventually(stock_settled, what="inventory holds exactly the reserved orders")
    report = await reconciled(
        make_settings("inventory"),
        label="SIGKILL of a live_orders process",
        accepted=BUYERS,
        final_states=[order["status"] for order in orders],
    )
    assert report.differences == []
