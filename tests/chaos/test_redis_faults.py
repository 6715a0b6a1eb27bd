"""Redis replies delayed past the client's timeout, and connections cut in the middle of a
reply, between live_orders and Redis, while buyers press buy (and retry with the same
Idempotency-Key on a 5xx, as clients do).

The nasty part is that every command reaches Redis and runs: only its reply is late or
lost. The known traps (redis-py #2665, #3554) are a connection reused with a reply still
in flight, which pairs the next command with the previous reply, and a retried step that
applies twice. So after the faults: every buyer's key names one order, readable by that
buyer and matching what they asked for; no order is left pending (the outbox republishes
what a lost reply left unpublished); and the stock counts each reserved order once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bench.flash_sale import Answer, SaleClient
from services.common.settings import Settings
from tests.conftest import Backends
from tests.fault_proxy import FaultProxy
from tests.reconciling import reconciled
from tests.waiting import eventually

pytestmark = pytest.mark.chaos

UNITS = 60
BUYERS = 150
TIMEOUT_S = 0.5


@pytest.fixture
async def proxy(backends: Backends) -> AsyncIterator[FaultProxy]:
    """Requested before `order_path`, so the apps stop before the proxy does."""
    proxy = FaultProxy("127.0.0.1", backends.redis_port, delay_s=TIMEOUT_S * 2)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def faults(proxy: FaultProxy, stop: asyncio.Event) -> None:
    """Pass, delay past the timeout, pass, cut mid-reply; again until told to stop."""
    schedule = [("delay", 0.3), ("pass", 0.3), ("cut", 0.15), ("pass", 0.3)]
    while not stop.is_set():
        for mode, seconds in schedule:
            proxy.mode = mode
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                continue
            break
    proxy.mode = "pass"


async def test_lost_and_late_redis_replies_apply_nothing_twice_and_lose_nothing(
    proxy: FaultProxy,
    order_path: Callable[..., Awaitable[SaleClient]],
    make_settings: Callable[..., Settings],
) -> None:
    client = await order_path(
        live_orders={"redis_url": proxy.url, "redis_timeout_s": TIMEOUT_S},
    )
    sku = "crab-faults"
    session_id = await client.start_sale(
        sku, units=UNITS, host_id="host-rf", price_cents=900, per_user_limit=1
    )
    retries: Counter[str] = Counter()

    async def buy(n: int) -> Answer:
        """One buyer, arriving n * 20 ms into the sale (so the presses span every kind of
        fault), retrying the same key while the answer is a 5xx (up to 30 s)."""
        await asyncio.sleep(n * 0.02)
        deadline = time.monotonic() + 30
        while True:
            answer = await client.place_order(
                buyer=f"b{n}", session_id=session_id, sku=sku, quantity=1, key=f"k{n}", wait=5
            )
            if answer.status < 500 or time.monotonic() > deadline:
                return answer
            retries[str(answer.status)] += 1
            await asyncio.sleep(0.05)  # a client's backoff before its retry

    stop = asyncio.Event()
    injecting = asyncio.create_task(faults(proxy, stop))
    try:
        answers = await asyncio.gather(*(buy(n) for n in range(BUYERS)))
    finally:
        stop.set()
        await injecting
    statuses = Counter(a.status for a in answers)
    print(f"\nredis faults: {proxy.counts}; answers {dict(statuses)}; 5xx retried {dict(retries)}")
    assert proxy.counts.delayed_chunks > 0 and proxy.counts.cut_connections > 0
    assert set(statuses) <= {201, 202, 409}, statuses

    # Each buyer's key names one order, the buyer's own, as they asked for it: a reply
    # paired with another request would show another buyer's order or another answer.
    orders: dict[int, dict[str, Any]] = {}
    for n, answer in enumerate(answers):
        again = await client.place_order(
            buyer=f"b{n}", session_id=session_id, sku=sku, quantity=1, key=f"k{n}", wait=0
        )
        assert again.body["order_id"] == answer.body["order_id"], n
        mine = await client.order(buyer=f"b{n}", order_id=answer.body["order_id"])
        assert mine.status == 200 and mine.body["sku"] == sku and mine.body["quantity"] == 1
        orders[n] = mine.body

    async def none_pending() -> bool:
        for n, body in orders.items():
            if body["status"] == "pending":
                latest = await client.order(buyer=f"b{n}", order_id=body["order_id"])
                orders[n] = latest.body
        return all(body["status"] != "pending" for body in orders.values())

    # A lost reply can leave an order stored but unpublished: the outbox sweep sends it
    # after 10 s, with no retry from its buyer.
    await eventually(none_pending, timeout=40, what="every order decided")
    final = Counter(body["status"] for body in orders.values())
    stock = await client.sku(sku)
    print(f"orders: {dict(final)}; stock: {stock}")
    assert final["reserved"] == min(UNITS, BUYERS) == stock["reserved"]
    assert stock["available"] == 0 and stock["sold"] == 0
    assert set(final) <= {"reserved", "rejected"}
    report = await reconciled(
        make_settings("inventory"),
        label="redis faults",
        accepted=len(orders),
        final_states=[body["status"] for body in orders.values()],
    )
    assert report.differences == []


async def test_every_service_answers_a_clear_503_while_redis_is_unreachable(
    proxy: FaultProxy, order_path: Callable[..., Awaitable[SaleClient]]
) -> None:
    through_proxy = {"redis_url": proxy.url, "redis_timeout_s": TIMEOUT_S}
    client = await order_path(inventory=through_proxy, live_orders=through_proxy)
    sku = "tea-unreachable"
    session_id = await client.start_sale(
        sku, units=5, host_id="host-rf", price_cents=900, per_user_limit=1
    )
    await proxy.stop()  # connections refused from now on
    inventory = await client.call(
        "GET", f"{client.endpoints.inventory}/v1/skus/{sku}", headers=client.headers("admin", "ops")
    )
    order = await client.place_order(
        buyer="b-down", session_id=session_id, sku=sku, quantity=1, key="k-down", wait=1
    )
    for answer in (inventory, order):
        assert answer.status == 503, answer
        assert answer.body["status"] == 503 and answer.body["title"] == "Service Unavailable"
    await proxy.start()  # Redis reachable again: the same key now makes the order

    async def placed() -> bool:
        again = await client.place_order(
            buyer="b-down", session_id=session_id, sku=sku, quantity=1, key="k-down", wait=2
        )
        return again.status == 201

    await eventually(placed, what="the order placed once Redis is back")
