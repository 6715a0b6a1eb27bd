"""The Kafka broker stops and comes back while the services run.

While it is away, readiness says so and buyers get a clear answer (no order is half
accepted); once it is back, the services reconnect on their own, orders are decided again,
and every order accepted before, during or after ends in one state with the stock
conserved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.flash_sale import SaleClient
from deploy.local.stack import free_port, start_kafka, stop_process
from services.common.settings import Settings
from tests.conftest import wait_ready
from tests.reconciling import reconciled
from tests.waiting import eventually

pytestmark = pytest.mark.chaos


async def readyz(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/readyz") as response:
        return response.status


class Broker:
    """A Kafka broker of this test alone, that it can stop and start again (same port,
    same data)."""

    def __init__(self, state_dir: Path) -> None:
        self.port, self._controller = free_port(), free_port()
        self._state_dir = state_dir
        self._started: Any = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        # Off the event loop: starting a broker blocks for seconds, and the apps under
        # test share this loop.
        self._started = await asyncio.to_thread(
            start_kafka,
            port=self.port,
            controller_port=self._controller,
            state_dir=self._state_dir / "kafka",
            log=self._state_dir / "kafka.log",
            heap="512m",
        )

    async def stop(self) -> None:
        if self._started is not None:
            await asyncio.to_thread(stop_process, self._started.proc)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """Requested before `run_app`, so the apps stop before the broker does."""
    kafka = Broker(tmp_path)
    await kafka.start()
    yield kafka
    await kafka.stop()


async def test_services_ride_out_a_broker_restart(
    broker: Broker,
    order_path: Callable[..., Awaitable[SaleClient]],
    http: aiohttp.ClientSession,
    make_settings: Callable[..., Settings],
) -> None:
    kafka = {"kafka_bootstrap": broker.bootstrap}
    client = await order_path(inventory=kafka, live_orders=kafka)
    live_orders_url, inventory_url = client.endpoints.live_orders, client.endpoints.inventory
    sku = "rice-restart"
    session_id = await client.start_sale(
        sku, units=100, host_id="host-r", price_cents=900, per_user_limit=2
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

    before = await asyncio.gather(*(order(n) for n in range(10)))
    assert [a.status for a in before] == [201] * 10

    await broker.stop()
    for url in (live_orders_url, inventory_url):

        async def unready(url: str = url) -> bool:
            return await readyz(http, url) == 503

        await eventually(unready, timeout=20, what=f"{url} unready without Kafka")
    during = await asyncio.gather(*(order(n) for n in range(10, 15)))
    # A clear answer, never a 5xx other than 503 and never a silent loss.
    assert {a.status for a in during} <= {201, 202, 503}, [a.status for a in during]

    await broker.start()
    for url in (live_orders_url, inventory_url):
        await wait_ready(url, timeout=60)
    # Retrying with the same keys completes whatever the outage interrupted.
    retried = await asyncio.gather(*(order(n) for n in range(10, 15)))
    after = await asyncio.gather(*(order(n) for n in range(15, 25)))
    for answer in (*retried, *after):
        assert answer.status in (201, 202), answer

    accepted = {
        a.body["order_id"]: f"b{n}"
        for n, a in enumerate([*before, *retried, *after])
        if a.status in (201, 202)
    }
    assert len(accepted) == 25

    async def all_decided() -> bool:
        states = [
            (await client.order(buyer=b, order_id=o, wait=1)).body["status"]
            for o, b in accepted.items()
        ]
        return states == ["reserved"] * len(states)

    await eventually(all_decided, timeout=60, interval=0.5, what="every order reserved")
    stock = await client.sku(sku)
    assert (stock["available"], stock["reserved"], stock["sold"]) == (75, 25, 0)
    report = await reconciled(
        make_settings("inventory", **kafka),
        label="broker restart",
        accepted=len(accepted),
        final_states=["reserved"] * len(accepted),
    )
    assert report.differences == []
