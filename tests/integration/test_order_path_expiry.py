"""live_orders + inventory together with a short hold: expiry, and pay / cancel / expiry
racing on the same orders. Each order must end in exactly one final state, and the units
must follow it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bench.flash_sale import Answer, SaleClient
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TTL_S = 2.0


@pytest.fixture
async def client(order_path: Callable[..., Awaitable[SaleClient]]) -> SaleClient:
    return await order_path(inventory={"reservation_ttl_s": TTL_S, "sweep_interval_s": 0.1})


async def reserve(client: SaleClient, sku: str, buyers: int) -> tuple[str, list[dict[str, Any]]]:
    session_id = await client.start_sale(
        sku, units=buyers, host_id="host-exp", price_cents=500, per_user_limit=1
    )
    answers = await asyncio.gather(
        *(
            client.place_order(
                buyer=f"b{i}", session_id=session_id, sku=sku, quantity=1, key=f"k{i}"
            )
            for i in range(buyers)
        )
    )
    assert [a.status for a in answers] == [201] * buyers
    return session_id, [a.body for a in answers]


async def test_unpaid_holds_expire_and_the_units_come_back(client: SaleClient) -> None:
    _, orders = await reserve(client, "tea-expiry", 5)
    assert (await client.sku("tea-expiry"))["reserved"] == 5

    async def all_expired() -> bool:
        states = [
            (await client.order(buyer=f"b{i}", order_id=o["order_id"])).body["status"]
            for i, o in enumerate(orders)
        ]
        return states == ["expired"] * 5

    await eventually(all_expired, timeout=TTL_S + 8, what="every hold expired")
    stock = await client.sku("tea-expiry")
    assert (stock["available"], stock["reserved"], stock["sold"]) == (5, 0, 0)

    late = await client.pay(orders[0]["order_id"], orders[0]["total_cents"], "late-pay")
    assert late.status == 409
    assert late.body["status"] == "expired"
    assert (await client.sku("tea-expiry"))["sold"] == 0


async def test_pay_cancel_and_expiry_racing_resolve_exactly_once(client: SaleClient) -> None:
    buyers = 30
    _, orders = await reserve(client, "tea-race", buyers)

    reserved_at = asyncio.get_running_loop().time()

    async def race(i: int, order: dict[str, Any]) -> tuple[Answer, Answer]:
        # A payment and a cancel at the same moment, staggered across orders from well
        # before the deadline to just after it, so every outcome gets its turn.
        fire_at = reserved_at + TTL_S - 1.2 + i * 1.5 / buyers
        await asyncio.sleep(max(0.0, fire_at - asyncio.get_running_loop().time()))
        pay, cancel = await asyncio.gather(
            client.pay(order["order_id"], order["total_cents"], f"pay-{i}"),
            client.cancel(buyer=f"b{i}", order_id=order["order_id"]),
        )
        return pay, cancel

    raced = await asyncio.gather(*(race(i, o) for i, o in enumerate(orders)))

    async def final_states() -> list[str]:
        states = [
            (await client.order(buyer=f"b{i}", order_id=o["order_id"], wait=5)).body["status"]
            for i, o in enumerate(orders)
        ]
        assert all(s in ("paid", "cancelled", "expired") for s in states), Counter(states)
        return states

    states = await eventually(final_states, timeout=15, what="every order final")
    for (pay, cancel), state in zip(raced, states, strict=True):
        # At most one of the two calls won, and what it answered is what stuck.
        assert not (pay.status == 200 and cancel.status == 200)
        if pay.status == 200:
            assert state == "paid"
        if cancel.status == 200:
            assert state == "cancelled"
    paid = states.count("paid")
    assert len(set(states)) >= 2, Counter(states)  # the race really had several winners
    stock = await client.sku("tea-race")
    assert stock["sold"] == paid
    assert stock["reserved"] == 0
    assert stock["available"] == buyers - paid
    assert stock["available"] + stock["reserved"] + stock["sold"] == stock["received"]
