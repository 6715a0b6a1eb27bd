"""Paying an order over HTTP: order.paid goes to the stand-in inventory through Kafka and
the answer waits for its outcome (committed, or expired when the hold ran out)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import auth
from tests.integration.live_orders_stack import (
    ADMIN,
    Stack,
    cancel,
    is_problem,
    live_session,
    order,
    pay,
    pending_order,
    reserved_order,
    uid,
)

pytestmark = pytest.mark.integration

# reserved_order reserves 2 units at 2500 cents each.
TOTAL = 5000


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"payment_ref": "p1", "amount_cents": TOTAL - 1}, id="wrong-amount"),
        pytest.param({"payment_ref": "p1", "amount_cents": TOTAL, "x": 1}, id="unknown-field"),
    ],
)
async def test_an_invalid_payment_is_a_422_problem(stack: Stack, body: dict[str, Any]) -> None:
    _, reserved, _ = await reserved_order(stack)

    status, answer, headers = await pay(stack, reserved["order_id"], body)

    assert status == 422 and is_problem(headers, answer, 422), answer


async def test_a_buyer_cannot_pay(stack: Stack) -> None:
    buyer, reserved, _ = await reserved_order(stack)

    status, body, _ = await pay(
        stack,
        reserved["order_id"],
        {"payment_ref": "p1", "amount_cents": TOTAL},
        auth("buyer", buyer),
    )

    assert status == 403, body


async def test_paying_an_unknown_order_is_a_404(stack: Stack) -> None:
    status, body, _ = await pay(stack, "nosuchorder", {"payment_ref": "p1", "amount_cents": 1})

    assert status == 404, body


async def test_paying_a_reserved_order_answers_it_paid(stack: Stack) -> None:
    _, reserved, _ = await reserved_order(stack)

    status, paid, headers = await pay(
        stack, reserved["order_id"], {"payment_ref": "p1", "amount_cents": TOTAL}
    )

    assert status == 200 and paid["status"] == "paid" and paid["payment_ref"] == "p1", paid
    assert headers["Content-Type"].startswith("application/json")
    assert len(stack.decider.events("order.paid", reserved["order_id"])) == 1


async def test_paying_again_with_the_same_ref_answers_paid_and_sends_it_once(
    stack: Stack,
) -> None:
    _, reserved, _ = await reserved_order(stack)
    payment = {"payment_ref": "p1", "amount_cents": TOTAL}
    status, _, _ = await pay(stack, reserved["order_id"], payment)
    assert status == 200

    status, again, _ = await pay(stack, reserved["order_id"], payment)

    assert status == 200 and again["status"] == "paid"
    assert len(stack.decider.events("order.paid", reserved["order_id"])) == 1


async def test_another_payment_ref_for_a_paid_order_is_a_409_naming_the_first(
    stack: Stack,
) -> None:
    _, reserved, _ = await reserved_order(stack)
    status, _, _ = await pay(
        stack, reserved["order_id"], {"payment_ref": "p1", "amount_cents": TOTAL}
    )
    assert status == 200

    status, other, _ = await pay(
        stack, reserved["order_id"], {"payment_ref": "p2", "amount_cents": TOTAL}, ADMIN
    )

    assert status == 409 and other["status"] == "paid" and other["payment_ref"] == "p1"
    assert len(stack.decider.events("order.paid", reserved["order_id"])) == 1


async def test_a_paid_order_cannot_be_cancelled(stack: Stack) -> None:
    buyer, reserved, _ = await reserved_order(stack)
    status, _, _ = await pay(
        stack, reserved["order_id"], {"payment_ref": "p1", "amount_cents": TOTAL}
    )
    assert status == 200

    status, cancelled, _ = await cancel(stack, reserved["order_id"], auth("buyer", buyer))

    assert status == 409 and cancelled["status"] == "paid"
    assert not stack.decider.events("order.cancelled", reserved["order_id"])


async def test_a_pending_order_cannot_be_paid(stack: Stack) -> None:
    _, pending, _ = await pending_order(stack)

    status, body, _ = await pay(
        stack, pending["order_id"], {"payment_ref": "p3", "amount_cents": 2500}
    )

    assert status == 409 and body["status"] == "pending"


async def test_a_rejected_order_cannot_be_paid(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=0)
    status, rejected, _ = await order(stack, sid, uid("buyer"), sku)
    assert status == 409, rejected

    status, body, _ = await pay(
        stack, rejected["order_id"], {"payment_ref": "p4", "amount_cents": 2500}
    )

    assert status == 409 and body["status"] == "rejected"


async def test_a_payment_after_the_hold_expired_is_a_409_expired(stack: Stack) -> None:
    _, reserved, sku = await reserved_order(stack)
    stack.decider.expire_on_pay.add(sku)

    status, body, _ = await pay(
        stack, reserved["order_id"], {"payment_ref": "p5", "amount_cents": TOTAL}
    )

    assert status == 409 and body["status"] == "expired", body


async def test_pay_and_cancel_racing_one_wins(stack: Stack) -> None:
    for _ in range(4):
        buyer, reserved, _ = await reserved_order(stack)
        order_id = reserved["order_id"]
        (pay_status, paid, _), (cancel_status, cancelled, _) = await asyncio.gather(
            pay(stack, order_id, {"payment_ref": "race", "amount_cents": reserved["total_cents"]}),
            cancel(stack, order_id, auth("buyer", buyer)),
        )
        assert sorted([pay_status, cancel_status]) == [200, 409], (paid, cancelled)
        final = "paid" if pay_status == 200 else "cancelled"
        assert paid["status"] == cancelled["status"] == final
        sent = stack.decider.events("order.paid", order_id) + stack.decider.events(
            "order.cancelled", order_id
        )
        assert [event.type for event in sent] == [f"order.{final}"]
