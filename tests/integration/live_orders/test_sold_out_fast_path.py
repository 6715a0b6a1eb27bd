"""The sold-out fast path: stock.changed on the inventory topic marks a SKU sold out in
Redis, and live_orders refuses its orders without asking inventory until a restock."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.live_orders_stack import ADMIN, Stack, call, live_session, order, uid
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def sold_out_session(stack: Stack, redis: Any) -> tuple[str, str, float]:
    """A live session whose SKU inventory just reported sold out; returns (session_id, sku,
    the moment the mark was seen in Redis)."""
    sid, _, sku = await live_session(stack, stock=5)
    await stack.decider.publish_stock(sku, 0)

    async def marked() -> bool:
        return bool(await redis.sismember(stack.keys.sold_out, sku))

    await eventually(marked, interval=0.005, what="stock.changed applied")
    return sid, sku, time.monotonic()


async def refused_as_sold_out(stack: Stack, sid: str, sku: str) -> dict[str, Any]:
    """Order until the fast path refuses (it may take a moment to reach every process)."""

    async def refused() -> dict[str, Any] | None:
        status, body, _ = await order(stack, sid, uid("buyer"), sku, wait=5)
        return body if status == 409 and body.get("reason") == "sold_out" else None

    return await eventually(refused, interval=0, timeout=2, what="refused as sold out")


async def test_a_sold_out_sku_is_refused_within_250_ms(stack: Stack, redis: Any) -> None:
    sid, sku, marked_at = await sold_out_session(stack, redis)

    while True:
        status, body, _ = await order(stack, sid, uid("buyer"), sku, wait=5)
        if status == 409 and body.get("reason") == "sold_out":
            break
        assert time.monotonic() - marked_at < 0.25, "sold out not known within 250 ms"

    assert time.monotonic() - marked_at < 0.25 + 0.1  # plus the one request in flight
    assert body["status"] == "rejected"


async def test_a_fast_path_refusal_is_stored_as_rejected(stack: Stack, redis: Any) -> None:
    sid, sku, _ = await sold_out_session(stack, redis)
    rejected = await refused_as_sold_out(stack, sid, sku)

    status, stored, _ = await call(stack, "GET", f"/v1/orders/{rejected['order_id']}", ADMIN)

    assert status == 200 and stored["status"] == "rejected" and stored["reason"] == "sold_out"


async def test_fast_path_refusals_are_counted_in_tallies_without_asking_inventory(
    stack: Stack, redis: Any
) -> None:
    sid, sku, _ = await sold_out_session(stack, redis)
    rejected_id = (await refused_as_sold_out(stack, sid, sku))["order_id"]
    more = [await order(stack, sid, uid("buyer"), sku, wait=5) for _ in range(5)]
    assert {(status, body["reason"]) for status, body, _ in more} == {(409, "sold_out")}

    async def counted() -> bool:
        # refused_as_sold_out may have needed a few attempts: every refusal is counted.
        sold_out, not_on_sale = stack.decider.tallied(sid)
        assert not_on_sale == 0 and sold_out >= 6
        return True

    await eventually(counted, what="attempts.tallied published")
    assert not stack.decider.events("order.placed", rejected_id)  # inventory never asked
    assert not stack.decider.events("order.rejected")  # counted, not published one by one


async def test_a_restock_lets_orders_through_again(stack: Stack, redis: Any) -> None:
    sid, sku, _ = await sold_out_session(stack, redis)
    await refused_as_sold_out(stack, sid, sku)

    await stack.decider.publish_stock(sku, 5)

    async def restocked() -> bool:
        return not await redis.sismember(stack.keys.sold_out, sku)

    await eventually(restocked, interval=0.005, what="restock applied")

    async def goes_through() -> bool:
        status, body, _ = await order(stack, sid, uid("buyer"), sku)
        assert status == 201, body
        return True

    await eventually(goes_through, timeout=2, what="orders go through after restock")


async def test_an_older_sold_out_snapshot_published_after_a_restock_is_ignored(
    stack: Stack, redis: Any
) -> None:
    """Two inventory processes may publish stock.changed in the opposite order of the
    states they read: the later offset is the older state. The version decides."""
    sid, _, sku = await live_session(stack, stock=5)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(stack.keys.stock_channel)
    heard: list[str] = []

    async def heard_all(expected: list[str]) -> bool:
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message["data"].decode().endswith(" " + sku):
            heard.append(message["data"].decode())
        return heard == expected

    try:
        await stack.decider.publish_stock(sku, 0, version=5)
        await eventually(lambda: heard_all([f"1 {sku}"]), what="sold out at version 5")
        await stack.decider.publish_stock(sku, 3, version=8)  # restocked
        await stack.decider.publish_stock(sku, 0, version=7)  # older, arrives later
        # Same key, so consumed after the two above: once it is heard, both were decided.
        await stack.decider.publish_stock(sku, 2, version=9)
        await eventually(
            lambda: heard_all([f"1 {sku}", f"0 {sku}", f"0 {sku}"]),
            what="restock and the newest snapshot, never the older sold out",
        )
    finally:
        await pubsub.aclose()
    assert not await redis.sismember(stack.keys.sold_out, sku)

    async def goes_through() -> bool:
        status, body, _ = await order(stack, sid, uid("buyer"), sku)
        assert status == 201, body
        return True

    await eventually(goes_through, timeout=2, what="orders go through (the fast path agrees)")
