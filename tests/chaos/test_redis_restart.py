"""Redis restarts (SIGTERM, AOF flushed) in the middle of a sale while the services run.

Stock, holds and orders come back from the append-only file; the services reconnect on
their own; buyers get clear answers meanwhile; and afterwards every accepted order has
one state and the stock is conserved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bench.flash_sale import SaleClient
from deploy.local.stack import free_port, start_redis, stop_process
from services.common.settings import Settings
from tests.conftest import wait_ready
from tests.reconciling import reconciled
from tests.waiting import eventually

pytestmark = pytest.mark.chaos


class RedisServer:
    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self._state_dir = state_dir
        self._started: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._started = await asyncio.to_thread(
            start_redis,
            port=self.port,
            state_dir=self._state_dir / "redis",
            log=self._state_dir / "redis.log",
        )

    async def stop(self) -> None:
        if self._started is not None:
            await asyncio.to_thread(stop_process, self._started.proc)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """Requested before `run_app`, so the apps stop before Redis does."""
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


async def test_a_redis_restart_mid_sale_loses_nothing(
    redis_server: RedisServer,
    order_path: Callable[..., Awaitable[SaleClient]],
    make_settings: Callable[..., Settings],
) -> None:
    redis = {"redis_url": redis_server.url}
    client = await order_path(inventory=redis, live_orders=redis)
    live_orders_url, inventory_url = client.endpoints.live_orders, client.endpoints.inventory
    sku = "tea-redis"
    session_id = await client.start_sale(
        sku, units=50, host_id="host-rr", price_cents=700, per_user_limit=2
    )

    async def order(n: int) -> Any:
        return await client.place_order(
            buyer=f"b{n}",
            session_id=session_id,
            sku=sku,
            quantity=1,
            key=f"k{n}",
            wait=5,
        )

    before = await asyncio.gather(*(order(n) for n in range(20)))
    assert [a.status for a in before] == [201] * 20
    paid = await client.pay(before[0].body["order_id"], 700, "pay-0")
    assert paid.status == 200

    await redis_server.stop()
    during = await order(99)
    assert during.status == 503, during  # a clear answer, nothing half done
    await redis_server.start()
    for url in (live_orders_url, inventory_url):
        await wait_ready(url, timeout=30)

    after = await asyncio.gather(*(order(n) for n in range(20, 30)))
    assert [a.status for a in after] == [201] * 10

    async def states() -> list[str]:
        return [
            (await client.order(buyer=f"b{n}", order_id=a.body["order_id"])).body["status"]
            for n, a in enumerate([*before, *after])
        ]

    await eventually(lambda: _is(states(), ["paid"] + ["reserved"] * 29), what="every order kept")
    stock = await client.sku(sku)
    assert (stock["received"], stock["available"], stock["reserved"], stock["sold"]) == (
        50,
        20,
        29,
        1,
    )
    report = await reconciled(
        make_settings("inventory", **redis),
        label="redis restart",
        accepted=30,
        final_states=await states(),
    )
    assert report.differences == []


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
