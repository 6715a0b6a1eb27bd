"""SIGKILL one of two inventory processes in the middle of a 开抢 burst.

The survivor takes over the dead member's partitions (after the session timeout) and
replays its uncommitted batches; the Lua steps make that replay harmless. Afterwards every
accepted order has a decision and the stock invariants hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from bench.flash_sale import Endpoints, SaleClient, read_back, run_burst
from services.common.settings import Settings
from tests.conftest import JWT_SECRET, ServiceProcess, wait_ready
from tests.reconciling import reconciled

pytestmark = pytest.mark.chaos

STOCK = 600
LIMIT = 2


async def test_sigkill_of_an_inventory_process_mid_burst_loses_nothing(
    make_settings: Callable[..., Settings],
    service_processes: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    live_orders = [service_processes(make_settings("live_orders")) for _ in range(2)]
    inventory = [service_processes(make_settings("inventory")) for _ in range(2)]
    for proc in (*live_orders, *inventory):
        await wait_ready(proc.url, proc=proc.proc)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        client = SaleClient(
            http,
            Endpoints(live_orders[0].url, inventory[1].url, "http://127.0.0.1:1", JWT_SECRET),
            live_orders_urls=[p.url for p in live_orders],
        )
        sku = "crab-chaos"
        session_id = await client.start_sale(
            sku, units=STOCK, host_id="host-chaos", price_cents=8800, per_user_limit=LIMIT
        )
        # All of one SKU's orders share a partition, so one inventory process decides them
        # all: find it with a first order, and kill that one.
        warm_up = await client.place_order(
            buyer="warm-up", session_id=session_id, sku=sku, quantity=1, key="w"
        )
        assert warm_up.status == 201
        owner = await deciding_process(http, inventory)
        killed = asyncio.Event()

        def kill_halfway(done: int, total: int) -> None:
            if done >= total // 40 and not killed.is_set():
                owner.kill()
                killed.set()

        result = await run_burst(
            client,
            session_id=session_id,
            sku=sku,
            buyers=600,
            attempts=2500,
            max_quantity=LIMIT,
            concurrency=200,
            progress=kill_halfway,
        )
        assert killed.is_set()
        assert owner.proc.returncode == -9
        statuses = result.statuses()
        assert not [s for s in statuses if s >= 500], statuses

        # Every accepted order reaches a decision (each read long-polls while pending).
        orders = await read_back(client, result, rounds=6)
        states = [orders[oid]["status"] for oid in result.final]
        assert "pending" not in states
        held_units = sum(
            o["quantity"]
            for (oid, o), state in zip(result.final.items(), states, strict=True)
            if state == "reserved"
        )

        survivor = next(p for p in inventory if p is not owner)
        client.endpoints = dataclasses.replace(client.endpoints, inventory=survivor.url)
        stock = await client.sku(sku)
        assert stock["available"] + stock["reserved"] + stock["sold"] == stock["received"]
        assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0
        assert stock["reserved"] == held_units + 1 == STOCK  # + the warm-up order
        per_buyer: dict[str, int] = {}
        for (_, order), state in zip(result.final.items(), states, strict=True):
            if state == "reserved":
                per_buyer[order["buyer"]] = per_buyer.get(order["buyer"], 0) + order["quantity"]
        assert max(per_buyer.values()) <= LIMIT
        report = await reconciled(
            make_settings("inventory"),
            label="SIGKILL of an inventory process",
            accepted=len(result.final) + 1,
            final_states=[*states, "reserved"],
        )
        assert report.differences == []


async def deciding_process(
    http: aiohttp.ClientSession, inventory: list[ServiceProcess]
) -> ServiceProcess:
    """The inventory process that consumed the orders topic so far (from its metrics)."""
    for proc in inventory:
        async with http.get(f"{proc.url}/metrics") as response:
            text = await response.text()
        consumed = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("lc_events_consumed_total") and 'type="order.placed"' in line
        ]
        if sum(consumed) > 0:
            return proc
    raise AssertionError("no inventory process has consumed the order")
