"""Outcomes consumed again (a replay, or a stale one arriving late) leave the order as it
is; the app reports itself ready and exposes its metrics."""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.integration.live_orders_stack import Stack, call, pay, reserved_order
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_replayed_and_stale_outcomes_change_nothing(stack: Stack) -> None:
    buyer, reserved, sku = await reserved_order(stack)
    order_id = reserved["order_id"]
    status, paid, _ = await pay(
        stack, order_id, {"payment_ref": "p1", "amount_cents": reserved["total_cents"]}
    )
    assert status == 200
    stale = {"type": "reservation.expired", "why": "stale"}
    base = {k: reserved[k] for k in ("order_id", "session_id", "sku", "quantity")} | {
        "buyer_id": buyer
    }
    before = stack.sample("lc_live_orders_ignored_outcomes_total", **stale)

    await stack.decider.publish(
        "reservation.confirmed",
        sku,
        {**base, "total_cents": 1, "expires_at": "2031-01-01T00:00:00Z"},
    )
    await stack.decider.publish("reservation.expired", sku, base)

    async def applied() -> bool:
        return stack.sample("lc_live_orders_ignored_outcomes_total", **stale) > before

    await eventually(applied, what="the stale events were consumed")
    status, now, _ = await call(stack, "GET", f"/v1/orders/{order_id}", auth("buyer", buyer))
    assert now == paid


async def test_the_app_is_ready_once_its_consumer_and_broadcast_run(stack: Stack) -> None:
    status, body, _ = await call(stack, "GET", "/readyz")

    assert status == 200 and body["checks"]["consumer"] and body["checks"]["broadcast"]


async def test_metrics_count_orders_by_outcome(stack: Stack) -> None:
    await reserved_order(stack)

    async with stack.http.get(stack.url + "/metrics") as response:
        text = await response.text()

    for name in (
        "lc_live_orders_order_outcomes_total",
        "lc_live_orders_fast_path_rejections_total",
        "lc_live_orders_rate_limited_total",
        "lc_live_orders_decision_seconds_count",
        "lc_live_orders_waiters",
    ):
        assert name in text, name
    assert 'lc_live_orders_order_outcomes_total{outcome="reserved"}' in text
