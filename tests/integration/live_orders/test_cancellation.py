"""Cancelling an order over HTTP: order.cancelled goes to the stand-in inventory through
Kafka, which releases the hold, and the answer waits for reservation.released."""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.integration.live_orders_stack import (
    ADMIN,
    PAYMENTS,
    Stack,
    cancel,
    pay,
    reserved_order,
    uid,
)

pytestmark = pytest.mark.integration


async def test_another_buyer_is_told_the_order_to_cancel_does_not_exist(stack: Stack) -> None:
    _, reserved, _ = await reserved_order(stack)

    status, body, _ = await cancel(stack, reserved["order_id"], auth("buyer", uid("buyer")))

    assert status == 404, body
    assert not stack.decider.events("order.cancelled", reserved["order_id"])


async def test_the_payments_role_cannot_cancel(stack: Stack) -> None:
    _, reserved, _ = await reserved_order(stack)

    status, body, _ = await cancel(stack, reserved["order_id"], PAYMENTS)

    assert status == 403, body


async def test_cancelling_a_reservation_releases_its_stock(stack: Stack) -> None:
    buyer, reserved, sku = await reserved_order(stack, stock=2)
    assert stack.decider.stock[sku] == 0

    status, cancelled, _ = await cancel(stack, reserved["order_id"], auth("buyer", buyer))

    assert status == 200 and cancelled["status"] == "cancelled"
    assert stack.decider.stock[sku] == 2  # released back to the pool
    assert len(stack.decider.events("order.cancelled", reserved["order_id"])) == 1


async def test_cancelling_again_answers_cancelled_and_sends_it_once(stack: Stack) -> None:
    buyer, reserved, _ = await reserved_order(stack)
    status, _, _ = await cancel(stack, reserved["order_id"], auth("buyer", buyer))
    assert status == 200

    status, again, _ = await cancel(stack, reserved["order_id"], ADMIN)

    assert status == 200 and again["status"] == "cancelled"
    assert len(stack.decider.events("order.cancelled", reserved["order_id"])) == 1


async def test_a_cancelled_order_cannot_be_paid(stack: Stack) -> None:
    buyer, reserved, _ = await reserved_order(stack)
    status, _, _ = await cancel(stack, reserved["order_id"], auth("buyer", buyer))
    assert status == 200

    status, body, _ = await pay(
        stack,
        reserved["order_id"],
        {"payment_ref": "p1", "amount_cents": reserved["total_cents"]},
    )

    assert status == 409 and body["status"] == "cancelled"
