"""Inventory's consumer group under faults that are not a clean crash, mid-burst:

- the process deciding the SKU is frozen (SIGSTOP) past the consumer session timeout
  (10 s), so the group gives its partitions to the other process, and then thawed
  (SIGCONT): the zombie carries on with the batch it held, against orders the survivor has
  decided meanwhile. Its Lua steps must find them decided and apply nothing twice;
- processes join and leave the group every second (consumer-group churn), so partitions
  move again and again while orders arrive, and batches are replayed by the next owner.

Afterwards: every accepted order has one decision, the stock is conserved, no buyer holds
more than the limit, and the log, inventory's Redis and live_orders' orders agree.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.flash_sale import BurstResult, Endpoints, SaleClient, read_back, run_burst
from services.common.settings import Settings
from tests.chaos.test_kill_inventory_mid_burst import deciding_process
from tests.conftest import JWT_SECRET, ServiceProcess, wait_ready
from tests.reconciling import reconciled

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(360)]

LIMIT = 2
SESSION_TIMEOUT_S = 10.0  # ConsumerRunner's session_timeout_ms


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def sale_on_processes(
    http: aiohttp.ClientSession,
    make_settings: Callable[..., Settings],
    service_processes: Callable[..., ServiceProcess],
    inventories: int,
) -> tuple[SaleClient, list[ServiceProcess], list[ServiceProcess]]:
    live_orders = [service_processes(make_settings("live_orders")) for _ in range(2)]
    inventory = [service_processes(make_settings("inventory")) for _ in range(inventories)]
    for proc in (*live_orders, *inventory):
        await wait_ready(proc.url, proc=proc.proc)
    client = SaleClient(
        http,
        Endpoints(live_orders[0].url, inventory[0].url, "http://127.0.0.1:1", JWT_SECRET),
        live_orders_urls=[p.url for p in live_orders],
    )
    return client, live_orders, inventory


async def check_outcome(
    client: SaleClient,
    result: BurstResult,
    *,
    sku: str,
    stock_units: int,
    extra_reserved: int,
    settings: Settings,
    label: str,
) -> None:
    """What every scenario here must end with, then its figures and the reconciliation."""
    statuses = result.statuses()
    assert not [s for s in statuses if s >= 500], statuses
    orders = await read_back(client, result, rounds=6)
    states = [orders[oid]["status"] for oid in result.final]
    assert "pending" not in states
    held = sum(
        o["quantity"]
        for (_, o), state in zip(result.final.items(), states, strict=True)
        if state == "reserved"
    )
    stock = await client.sku(sku)
    assert stock["available"] + stock["reserved"] + stock["sold"] == stock["received"]
    assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0
    # Each reserved order counted once: the zombie or a replay applied nothing again.
    assert stock["reserved"] == held + extra_reserved
    assert stock["reserved"] == stock_units  # demand far above supply: sold out
    per_buyer: Counter[str] = Counter()
    for (_, order), state in zip(result.final.items(), states, strict=True):
        if state == "reserved":
            per_buyer[order["buyer"]] += order["quantity"]
    assert max(per_buyer.values()) <= LIMIT
    report = await reconciled(
        settings,
        label=label,
        accepted=len(result.final) + extra_reserved,
        final_states=[*states, *["reserved"] * extra_reserved],
    )
    assert report.differences == []


async def test_a_frozen_inventory_process_thawed_after_its_session_timeout_applies_nothing_twice(
    make_settings: Callable[..., Settings],
    service_processes: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
) -> None:
    stock_units = 500
    client, _, inventory = await sale_on_processes(http, make_settings, service_processes, 2)
    sku = "crab-zombie"
    session_id = await client.start_sale(
        sku, units=stock_units, host_id="host-z", price_cents=8800, per_user_limit=LIMIT
    )
    warm_up = await client.place_order(
        buyer="warm-up", session_id=session_id, sku=sku, quantity=1, key="w"
    )
    assert warm_up.status == 201
    owner = await deciding_process(http, inventory)
    survivor = next(p for p in inventory if p is not owner)
    client.endpoints = Endpoints(
        client.endpoints.live_orders, survivor.url, client.endpoints.notifier, JWT_SECRET
    )
    frozen = asyncio.Event()
    started = time.monotonic()

    async def freeze_then_thaw() -> float:
        await frozen.wait()
        owner.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        # The fault itself: frozen past the session timeout, so the group moves on.
        await asyncio.sleep(SESSION_TIMEOUT_S + 3)
        owner.proc.send_signal(signal.SIGCONT)
        return time.monotonic() - stopped

    def freeze_early(done: int, total: int) -> None:
        if done >= total // 20:
            frozen.set()

    fault = asyncio.create_task(freeze_then_thaw())
    result = await run_burst(
        client,
        session_id=session_id,
        sku=sku,
        buyers=500,
        attempts=2000,
        max_quantity=LIMIT,
        concurrency=150,
        progress=freeze_early,
    )
    frozen_s = await fault
    # The zombie is alive again, and ready once it rejoined the group.
    assert owner.proc.poll() is None
    await wait_ready(owner.url, timeout=60, proc=owner.proc)
    print(
        f"\nSIGSTOP for {frozen_s:.1f} s; answers {dict(result.statuses())}; "
        f"burst {result.finished - result.started:.1f} s; total {time.monotonic() - started:.1f} s"
    )
    assert frozen_s > SESSION_TIMEOUT_S
    # The group gave the frozen member's partitions away: the other process decided too.
    assert await deciding_process(http, [survivor]) is survivor
    await check_outcome(
        client,
        result,
        sku=sku,
        stock_units=stock_units,
        extra_reserved=1,
        settings=make_settings("inventory"),
        label="SIGSTOP of the deciding inventory process past its session timeout",
    )


async def test_inventory_processes_joining_and_leaving_every_second_lose_and_double_nothing(
    make_settings: Callable[..., Settings],
    service_processes: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    stock_units = 400
    client, _, inventory = await sale_on_processes(http, make_settings, service_processes, 1)
    sku = "tea-churn"
    session_id = await client.start_sale(
        sku, units=stock_units, host_id="host-c", price_cents=700, per_user_limit=LIMIT
    )
    burst_over = asyncio.Event()
    joined: list[ServiceProcess] = []
    left: list[ServiceProcess] = []
    started = time.monotonic()

    async def churn() -> None:
        """Every second one process joins; once two churners run, the oldest leaves too
        (a clean stop: it commits and leaves the group, which rebalances again)."""
        leaving: list[asyncio.Task[Any]] = []
        while not burst_over.is_set():
            joined.append(service_processes(make_settings("inventory")))
            live = [p for p in joined if p not in left]
            if len(live) > 2:
                left.append(live[0])
                leaving.append(asyncio.create_task(asyncio.to_thread(live[0].stop)))
            try:
                # The fault's rhythm: one membership change a second, not a readiness wait.
                await asyncio.wait_for(burst_over.wait(), 1.0)
            except TimeoutError:
                continue
        await asyncio.gather(*leaving)

    churning = asyncio.create_task(churn())
    try:
        result = await run_burst(
            client,
            session_id=session_id,
            sku=sku,
            buyers=400,
            attempts=1600,
            max_quantity=LIMIT,
            concurrency=40,
            # Offered over 5 s: the churn needs seconds (one change a second), and the
            # stack answers 1,600 attempts in about one.
            spread_s=5.0,
        )
    finally:
        burst_over.set()
        await churning
    print(
        f"\nchurn: {len(joined)} joined, {len(left)} left during a "
        f"{result.finished - result.started:.1f} s burst; answers {dict(result.statuses())}; "
        f"total {time.monotonic() - started:.1f} s"
    )
    assert len(joined) >= 3 and len(left) >= 1
    # The one process that stayed answers the stock; the others may be gone.
    await wait_ready(inventory[0].url, proc=inventory[0].proc)
    await check_outcome(
        client,
        result,
        sku=sku,
        stock_units=stock_units,
        extra_reserved=0,
        settings=make_settings("inventory"),
        label="inventory consumer-group churn",
    )
