"""The order path as processes: a 开抢 burst through two live_orders and two inventory
processes, then a full replay of the inventory consumer group.

DESIGN 3 invariants checked: 1 (stock conservation), 2 (at most once per order, also on
replay), 3 (per-user limit), 4 (every accepted order reaches a decision).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.flash_sale import BurstResult, Endpoints, SaleClient, read_back, run_burst
from services.common.kafka_topics import Topics
from tests.conftest import (
    JWT_SECRET,
    Backends,
    ServiceProcess,
    new_prefix,
    settings_for,
    start_service_process,
    wait_ready,
)
from tests.kafka_offsets import group_caught_up, read_topic, reset_group_to_earliest
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

STOCK = 300
LIMIT = 2
BUYERS = 1000
ATTEMPTS = 5000


@dataclass
class SaleStack:
    backends: Backends
    prefix: str
    live_orders: list[ServiceProcess]
    inventory: list[ServiceProcess]
    inventory_settings: list[Any]
    client: SaleClient
    log_dir: Path

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.prefix)


@pytest.fixture(scope="module")
async def stack(
    backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SaleStack]:
    prefix = new_prefix()
    log_dir = tmp_path_factory.mktemp("burst")
    orders_settings = [settings_for(backends, prefix, "live_orders") for _ in range(2)]
    inventory_settings = [settings_for(backends, prefix, "inventory") for _ in range(2)]
    live_orders = [start_service_process(s, log_dir) for s in orders_settings]
    inventory = [start_service_process(s, log_dir) for s in inventory_settings]
    for proc in (*live_orders, *inventory):
        await wait_ready(proc.url, proc=proc.proc)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        endpoints = Endpoints(
            live_orders=live_orders[0].url,
            inventory=inventory[0].url,
            notifier="http://127.0.0.1:1",
            jwt_secret=JWT_SECRET,
        )
        client = SaleClient(http, endpoints, live_orders_urls=[p.url for p in live_orders])
        yield SaleStack(
            backends, prefix, live_orders, inventory, inventory_settings, client, log_dir
        )
    for proc in (*live_orders, *inventory):
        proc.stop()


@pytest.fixture(scope="module")
async def burst(stack: SaleStack) -> tuple[BurstResult, str, str]:
    client = stack.client
    sku = "crab-burst"
    session_id = await client.start_sale(
        sku, units=STOCK, host_id="host-burst", price_cents=8800, per_user_limit=LIMIT
    )
    result = await run_burst(
        client,
        session_id=session_id,
        sku=sku,
        buyers=BUYERS,
        attempts=ATTEMPTS,
        max_quantity=LIMIT,
        concurrency=300,
    )
    return result, sku, session_id


async def order_states(client: SaleClient, result: BurstResult) -> dict[str, str]:
    return {oid: order["status"] for oid, order in (await read_back(client, result)).items()}


async def test_burst_reserves_exactly_the_stock(
    stack: SaleStack, burst: tuple[BurstResult, str, str]
) -> None:
    result, sku, _ = burst
    statuses = result.statuses()
    assert len(result.attempts) == ATTEMPTS
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {201, 409, 429}, statuses
    reserved_units = sum(a.quantity for a in result.reserved())
    assert reserved_units == STOCK
    assert max(result.units_by_buyer().values()) <= LIMIT
    assert set(result.reasons()) <= {"sold_out", "limit_exceeded"}

    stock = await stack.client.sku(sku)
    assert stock["received"] == STOCK
    assert (stock["available"], stock["reserved"], stock["sold"]) == (0, STOCK, 0)

    states = await order_states(stack.client, result)
    # Every order the burst created is in exactly one held or final state, and agrees with
    # what its buyer was told.
    assert set(states.values()) <= {"reserved", "rejected"}
    for attempt in result.attempts:
        if attempt.answer.status in (201, 409):
            expected = "reserved" if attempt.answer.status == 201 else "rejected"
            assert states[attempt.answer.body["order_id"]] == expected
    assert Counter(states.values())["reserved"] == len(result.reserved())


async def test_replaying_the_orders_topic_changes_nothing(
    stack: SaleStack, burst: tuple[BurstResult, str, str]
) -> None:
    result, sku, _ = burst
    bootstrap = stack.backends.kafka_bootstrap
    group = f"{stack.prefix}inventory"
    before_stock = await stack.client.sku(sku)
    before_states = await order_states(stack.client, result)
    outcome_ids = {
        e.event_id
        for e in await read_topic(bootstrap, stack.topics.inventory)
        if e.type.startswith("reservation.")
    }

    for proc in stack.inventory:
        proc.stop()
    await reset_group_to_earliest(bootstrap, group, stack.topics.orders)
    stack.inventory[:] = [start_service_process(s, stack.log_dir) for s in stack.inventory_settings]
    for proc in stack.inventory:
        await wait_ready(proc.url, proc=proc.proc)

    async def replayed() -> bool:
        return await group_caught_up(bootstrap, group, stack.topics.orders)

    await eventually(replayed, timeout=60, interval=0.5, what="inventory replayed the topic")
    assert await stack.client.sku(sku) == before_stock
    assert await order_states(stack.client, result) == before_states
    # Decisions were re-published under the ids they had: nothing new to act upon.
    after_ids = {
        e.event_id
        for e in await read_topic(bootstrap, stack.topics.inventory)
        if e.type.startswith("reservation.")
    }
    assert after_ids == outcome_ids
