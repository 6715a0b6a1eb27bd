"""Placing and reading orders over HTTP, decided by the stand-in inventory through Kafka:
reservations and rejections, waiting for a decision, idempotency keys, refused requests,
the rate limit, and listings that are not on sale."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from services.common.clock import to_rfc3339, utc_now
from services.live_orders.redis_keys import RedisKeys, buyer_tag
from tests.conftest import auth
from tests.events import data_of
from tests.integration.live_orders_stack import (
    ADMIN,
    Answer,
    Stack,
    add_listing,
    call,
    is_problem,
    live_session,
    move_session,
    new_session,
    order,
    pending_order,
    reserved_order,
    uid,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------- decided by inventory


async def test_an_order_in_stock_is_reserved_and_placed_for_inventory(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=3, per_user_limit=2, price_cents=2500)
    buyer = uid("buyer")

    status, reserved, headers = await order(stack, sid, buyer, sku, 2)

    assert status == 201, reserved
    assert headers["Content-Type"].startswith("application/json")
    assert reserved["status"] == "reserved"
    assert reserved["session_id"] == sid and reserved["sku"] == sku and reserved["quantity"] == 2
    assert reserved["unit_price_cents"] == 2500 and reserved["total_cents"] == 5000
    assert reserved["expires_at"].endswith("Z")
    (placed,) = stack.decider.events("order.placed", reserved["order_id"])
    assert data_of(placed)["buyer_id"] == buyer and data_of(placed)["per_user_limit"] == 2
    assert data_of(placed)["total_cents"] == 5000


async def test_an_order_over_the_buyers_limit_is_rejected_as_limit_exceeded(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=3, per_user_limit=2)
    buyer = uid("buyer")
    status, reserved, _ = await order(stack, sid, buyer, sku, 2)
    assert status == 201, reserved

    status, over, _ = await order(stack, sid, buyer, sku, 1)

    assert status == 409 and over["status"] == "rejected" and over["reason"] == "limit_exceeded"
    assert over["order_id"] != reserved["order_id"]


async def test_an_order_beyond_the_stock_is_rejected_as_sold_out(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=1)
    status, first, _ = await order(stack, sid, uid("buyer"), sku, 1)
    assert status == 201, first

    status, late, _ = await order(stack, sid, uid("buyer"), sku, 1)

    assert status == 409 and late["status"] == "rejected" and late["reason"] == "sold_out"


# --------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("reader", ["its-buyer", "an-admin"])
async def test_an_order_is_read_by_its_buyer_and_admins(stack: Stack, reader: str) -> None:
    buyer, reserved, _ = await reserved_order(stack)
    headers = auth("buyer", buyer) if reader == "its-buyer" else ADMIN

    status, seen, _ = await call(stack, "GET", f"/v1/orders/{reserved['order_id']}", headers)

    assert status == 200 and seen == reserved


async def test_another_buyer_is_told_an_order_does_not_exist(stack: Stack) -> None:
    _, reserved, _ = await reserved_order(stack)

    status, body, _ = await call(
        stack, "GET", f"/v1/orders/{reserved['order_id']}", auth("buyer", uid("buyer"))
    )

    assert status == 404, body


async def test_a_host_cannot_read_orders(stack: Stack) -> None:
    _, reserved, _ = await reserved_order(stack)

    status, body, _ = await call(
        stack, "GET", f"/v1/orders/{reserved['order_id']}", auth("host", "h")
    )

    assert status == 403, body


async def test_an_unknown_order_is_a_404(stack: Stack) -> None:
    status, body, _ = await call(stack, "GET", "/v1/orders/0000", auth("buyer", uid("buyer")))

    assert status == 404, body


# ---------------------------------------------------------------------- waiting for inventory


async def test_no_decision_within_the_wait_answers_202_pending_after_the_wait(
    stack: Stack,
) -> None:
    sid, _, sku = await live_session(stack)
    stack.decider.silent_skus.add(sku)
    started = time.monotonic()

    status, pending, _ = await order(stack, sid, uid("buyer"), sku, wait=0.3)

    elapsed = time.monotonic() - started
    assert status == 202 and pending["status"] == "pending", pending
    assert 0.3 <= elapsed < 2.0


async def test_wait_zero_answers_202_at_once(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)
    stack.decider.silent_skus.add(sku)
    started = time.monotonic()

    status, pending, _ = await order(stack, sid, uid("buyer"), sku, wait=0)

    assert status == 202 and pending["status"] == "pending", pending
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("wait", ["abc", "-1", "nan"])
async def test_reading_an_order_with_a_nonsense_wait_is_a_400(stack: Stack, wait: str) -> None:
    buyer, pending, _ = await pending_order(stack)

    status, body, _ = await call(
        stack, "GET", f"/v1/orders/{pending['order_id']}?wait={wait}", auth("buyer", buyer)
    )

    assert status == 400, body


async def test_reading_an_undecided_order_without_waiting_answers_pending(stack: Stack) -> None:
    buyer, pending, _ = await pending_order(stack)

    status, still, _ = await call(
        stack, "GET", f"/v1/orders/{pending['order_id']}?wait=0", auth("buyer", buyer)
    )

    assert status == 200 and still["status"] == "pending"


async def test_a_long_poll_returns_as_soon_as_the_decision_lands(stack: Stack) -> None:
    buyer, pending, sku = await pending_order(stack)
    poll = asyncio.create_task(
        call(stack, "GET", f"/v1/orders/{pending['order_id']}?wait=8", auth("buyer", buyer))
    )

    async def waiting() -> bool:
        return stack.sample("lc_live_orders_waiters") > 0

    await eventually(waiting, what="the GET to be waiting", timeout=5)
    started = time.monotonic()
    await stack.decider.publish(
        "reservation.confirmed",
        sku,
        {
            **{k: pending[k] for k in ("order_id", "session_id", "sku", "quantity", "total_cents")},
            "buyer_id": buyer,
            "expires_at": "2030-01-01T00:00:00.000Z",
        },
    )
    status, decided, _ = await poll

    assert status == 200 and decided["status"] == "reserved"
    assert decided["expires_at"] == "2030-01-01T00:00:00.000Z"
    assert time.monotonic() - started < 3.0


# --------------------------------------------------------------------------- idempotency


async def test_fifty_concurrent_requests_with_one_key_make_one_order(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=100, per_user_limit=5)
    buyer, key = uid("buyer"), uuid.uuid4().hex

    answers = await asyncio.gather(*(order(stack, sid, buyer, sku, 1, key=key) for _ in range(50)))

    order_ids = {body["order_id"] for _, body, _ in answers}
    assert len(order_ids) == 1, answers[:3]
    assert {status for status, _, _ in answers} == {201}
    (order_id,) = order_ids
    assert len(stack.decider.events("order.placed", order_id)) == 1
    assert stack.decider.stock[sku] == 99


async def test_a_replayed_key_answers_the_same_order(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)
    buyer, key = uid("buyer"), uuid.uuid4().hex
    status, first, _ = await order(stack, sid, buyer, sku, 1, key=key)
    assert status == 201, first

    status, replay, _ = await order(stack, sid, buyer, sku, 1, key=key)

    assert status == 201 and replay["order_id"] == first["order_id"]
    assert len(stack.decider.events("order.placed", first["order_id"])) == 1


async def test_a_key_reused_with_another_body_is_a_422_problem(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)
    buyer, key = uid("buyer"), uuid.uuid4().hex
    status, first, _ = await order(stack, sid, buyer, sku, 1, key=key)
    assert status == 201, first

    status, body, headers = await order(stack, sid, buyer, sku, 2, key=key)

    assert status == 422 and is_problem(headers, body, 422)


async def test_keys_are_scoped_per_buyer(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)
    key = uuid.uuid4().hex
    status, mine, _ = await order(stack, sid, uid("buyer"), sku, 1, key=key)
    assert status == 201, mine

    status, theirs, _ = await order(stack, sid, uid("buyer"), sku, 1, key=key)

    assert status == 201 and theirs["order_id"] != mine["order_id"]


async def test_an_order_without_an_idempotency_key_is_a_400_problem(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)

    status, body, headers = await call(
        stack,
        "POST",
        f"/v1/sessions/{sid}/orders",
        auth("buyer", uid("buyer")),
        {"sku": sku, "quantity": 1},
    )

    assert status == 400 and is_problem(headers, body, 400)


# ------------------------------------------------------------------------ refused requests


async def post_order(
    stack: Stack,
    session_id: str,
    buyer: str,
    *,
    key: str | None = None,
    json: Any = None,
    data: bytes | io.BytesIO | None = None,
) -> Answer:
    headers = {**auth("buyer", buyer), "Idempotency-Key": key or uuid.uuid4().hex}
    if data is not None:
        headers["Content-Type"] = "application/json"  # raw bytes, declared as JSON
    path = f"/v1/sessions/{session_id}/orders"
    return await call(stack, "POST", path, headers, json, data=data)


# The live session's SKU is listed with per_user_limit=2.
INVALID_ORDERS = [
    pytest.param(lambda sku: {"sku": uid("nosuch"), "quantity": 1}, id="unlisted-sku"),
    pytest.param(lambda sku: {"sku": sku, "quantity": 0}, id="zero"),
    pytest.param(lambda sku: {"sku": sku, "quantity": 3}, id="over-the-limit"),
    pytest.param(lambda sku: {"sku": sku, "quantity": 1, "price_cents": 1}, id="own-price"),
    pytest.param(lambda sku: {"sku": sku, "quantity": 1, "user_id": "x"}, id="another-buyer"),
    pytest.param(lambda sku: {"sku": sku, "quantity": "1"}, id="quantity-as-string"),
    pytest.param(lambda sku: {"sku": sku, "quantity": 1.0}, id="quantity-as-float"),
    pytest.param(lambda sku: {"sku": sku}, id="no-quantity"),
    pytest.param(lambda sku: [sku, 1], id="not-an-object"),
]


@pytest.mark.parametrize("body_for", INVALID_ORDERS)
async def test_an_invalid_order_is_a_422_problem(stack: Stack, body_for: Any) -> None:
    sid, _, sku = await live_session(stack, per_user_limit=2)

    status, body, headers = await post_order(stack, sid, uid("buyer"), json=body_for(sku))

    assert status == 422 and is_problem(headers, body, 422), body


@pytest.mark.parametrize("data", [b'{"sku": ', b""], ids=["truncated", "empty"])
async def test_an_order_that_is_not_json_is_a_400_problem(stack: Stack, data: bytes) -> None:
    sid, _, _ = await live_session(stack)

    status, body, headers = await post_order(stack, sid, uid("buyer"), data=data)

    assert status == 400 and is_problem(headers, body, 400), body


async def test_an_order_over_the_size_limit_is_a_413_problem(stack: Stack) -> None:
    sid, _, _ = await live_session(stack)
    huge = b'{"sku": "' + b"x" * (2 * 1024 * 1024) + b'", "quantity": 1}'

    status, body, headers = await post_order(stack, sid, uid("buyer"), data=io.BytesIO(huge))

    assert status == 413 and is_problem(headers, body, 413), body


async def test_an_order_in_an_unknown_session_is_a_404(stack: Stack) -> None:
    _, _, sku = await live_session(stack)

    status, body, _ = await post_order(
        stack, "nosuchsession", uid("buyer"), json={"sku": sku, "quantity": 1}
    )

    assert status == 404, body


async def test_a_host_cannot_place_orders(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)
    headers = {**auth("host", uid("host")), "Idempotency-Key": uuid.uuid4().hex}

    status, body, _ = await call(
        stack, "POST", f"/v1/sessions/{sid}/orders", headers, {"sku": sku, "quantity": 1}
    )

    assert status == 403, body


async def test_refused_order_requests_publish_nothing_and_claim_nothing(
    stack: Stack, redis: Any
) -> None:
    sid, _, sku = await live_session(stack, per_user_limit=2)
    buyer, key = uid("buyer"), uuid.uuid4().hex
    as_host = {**auth("host", buyer), "Idempotency-Key": key}
    before = await stack.decider.orders_topic_size()
    refused = [
        await post_order(stack, sid, buyer, key=key, json={"sku": sku, "quantity": 3}),
        await post_order(stack, sid, buyer, key=key, json={"sku": uid("nosuch"), "quantity": 1}),
        await post_order(stack, sid, buyer, key=key, data=b'{"sku": '),
        await post_order(stack, sid, buyer, key=key, data=io.BytesIO(b"x" * (2 * 1024 * 1024))),
        await post_order(stack, "nosuchsession", buyer, key=key, json={"sku": sku, "quantity": 1}),
        await call(
            stack, "POST", f"/v1/sessions/{sid}/orders", as_host, {"sku": sku, "quantity": 1}
        ),
    ]
    assert [status for status, _, _ in refused] == [422, 422, 400, 413, 404, 403]
    assert await stack.decider.orders_topic_size() == before

    # Nothing stored for this buyer (no bucket, no key)...
    prefix = stack.settings.redis_prefix
    pattern = f"{prefix}lo:{{u:{buyer_tag(buyer)}}}:*:{buyer}*"
    assert [k async for k in redis.scan_iter(match=pattern)] == []
    # ...so the same Idempotency-Key still makes a fresh order, the only one published.
    status, placed, _ = await post_order(
        stack, sid, buyer, key=key, json={"sku": sku, "quantity": 1}
    )
    assert status == 201, placed
    keys = RedisKeys(prefix)
    assert sorted([k async for k in redis.scan_iter(match=pattern)]) == sorted(
        [keys.idempotency(buyer, key).encode(), keys.bucket(buyer).encode()]
    )
    assert await stack.decider.orders_topic_size() == before + 1
    assert [(e.type, data_of(e)["order_id"]) for e in stack.decider.events_of_buyer(buyer)] == [
        ("order.placed", placed["order_id"])
    ]


# ------------------------------------------------------------------------------ rate limit


async def test_a_human_pressing_three_times_is_not_rate_limited(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=1000, per_user_limit=1000)
    human = uid("human")

    # Three presses with three keys (a client that sent one key would only replay).
    presses = await asyncio.gather(*(order(stack, sid, human, sku, 1, wait=0) for _ in range(3)))

    assert all(status in (201, 202) for status, _, _ in presses), presses


async def bot_orders(stack: Stack, presses: int = 25) -> tuple[str, list[Answer]]:
    """One buyer ordering as fast as answers come back; returns (buyer, answers)."""
    sid, _, sku = await live_session(stack, stock=1000, per_user_limit=1000)
    bot = uid("bot")
    return bot, [await order(stack, sid, bot, sku, 1, wait=0) for _ in range(presses)]


async def test_a_bot_is_rate_limited_after_its_burst_with_a_429_problem(stack: Stack) -> None:
    _, answers = await bot_orders(stack)

    statuses = [status for status, _, _ in answers]
    assert all(status in (201, 202) for status in statuses[: stack.settings.rate_limit_burst])
    limited = [(body, headers) for status, body, headers in answers if status == 429]
    assert limited, statuses
    body, headers = limited[0]
    assert is_problem(headers, body, 429)
    assert int(headers["Retry-After"]) >= 1


async def test_a_rate_limited_attempt_never_reaches_inventory(stack: Stack) -> None:
    bot, answers = await bot_orders(stack)
    accepted = sum(1 for status, _, _ in answers if status != 429)
    assert accepted < len(answers)

    async def only_the_accepted_placed() -> bool:
        placed = stack.decider.events_of_buyer(bot)
        assert len(placed) == accepted, (len(placed), accepted)
        return True

    await eventually(only_the_accepted_placed, what="exactly the accepted orders on the topic")


# ----------------------------------------------------------------------------- not on sale


async def assert_not_on_sale(stack: Stack, session_id: str, sku: str) -> None:
    """An order is refused as not_on_sale, counted in its session's tally, never placed."""
    counted_before = stack.decider.tallied(session_id)[1]
    status, body, _ = await order(stack, session_id, uid("buyer"), sku)
    assert status == 409 and body["status"] == "rejected" and body["reason"] == "not_on_sale"

    async def counted() -> bool:
        assert stack.decider.tallied(session_id) == (0, counted_before + 1)
        return True

    await eventually(counted, what="attempts.tallied for the not_on_sale attempt")
    assert not stack.decider.events("order.placed", body["order_id"])


async def scheduled_listing(stack: Stack, **window: str) -> tuple[str, str, str]:
    """A scheduled session with one listing (sale window `window`) the decider holds 10 of;
    returns (session_id, host, sku)."""
    host, sku = uid("host"), uid("rice")
    sid = (await new_session(stack, host, "Rice"))["session_id"]
    await add_listing(stack, sid, host, sku, per_user_limit=5, price_cents=100, **window)
    stack.decider.stock[sku] = 10
    return sid, host, sku


async def test_an_order_before_the_session_starts_is_not_on_sale(stack: Stack) -> None:
    sid, _, sku = await scheduled_listing(stack)

    await assert_not_on_sale(stack, sid, sku)


async def test_an_order_before_the_sale_window_opens_is_not_on_sale(stack: Stack) -> None:
    soon = to_rfc3339(utc_now() + timedelta(hours=1))
    sid, host, sku = await scheduled_listing(stack, sale_starts_at=soon)
    await move_session(stack, sid, host, "start")

    await assert_not_on_sale(stack, sid, sku)


async def test_an_order_after_the_sale_window_closed_is_not_on_sale(stack: Stack) -> None:
    past = to_rfc3339(utc_now() - timedelta(hours=1))
    sid, host, sku = await scheduled_listing(stack, sale_ends_at=past)
    await move_session(stack, sid, host, "start")

    await assert_not_on_sale(stack, sid, sku)


async def test_an_order_after_the_session_ended_is_not_on_sale(stack: Stack) -> None:
    sid, host, sku = await scheduled_listing(stack)
    await move_session(stack, sid, host, "start")
    status, body, _ = await order(stack, sid, uid("buyer"), sku)
    assert status == 201, body  # on sale while live
    await move_session(stack, sid, host, "end")

    await assert_not_on_sale(stack, sid, sku)
