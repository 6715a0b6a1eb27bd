"""live_orders rules that need no server: waits, sale windows, listings, the order state
table, answers' status codes, request schemas, and the waiter registry."""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.common import kafka_consumer
from services.common.schemas import SCHEMAS_DIR, first_error
from services.live_orders import order_waiters
from services.live_orders.domain import (
    OUTCOME_TRANSITIONS,
    InvalidInput,
    Listing,
    Order,
    check_quantity,
    is_valid_id,
    is_valid_idempotency_key,
    new_listing,
    parse_wait,
    request_fingerprint,
)
from services.live_orders.http_api import placement_status_code
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_store import order_from_record, order_to_record
from services.live_orders.order_waiters import (
    OrderUpdate,
    OrderWaiters,
    announcement_prefix,
    decode_updates,
    encode_updates,
)
from services.live_orders.session_store import listing_from_record, listing_to_record
from tests.waiting import eventually

NOON = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def listing(**changes: object) -> Listing:
    base: dict[str, object] = {
        "sku": "crab-01",
        "title": "Hairy crab",
        "price_cents": 2500,
        "per_user_limit": 2,
        "sale_starts_at": None,
        "sale_ends_at": None,
    }
    return Listing(**{**base, **changes})  # type: ignore[arg-type]


def an_order(**changes: object) -> Order:
    base: dict[str, object] = {
        "order_id": "o1",
        "status": "pending",
        "session_id": "s1",
        "sku": "crab-01",
        "buyer_id": "b1",
        "quantity": 2,
        "unit_price_cents": 2500,
        "total_cents": 5000,
        "per_user_limit": 2,
        "placed_at": "2030-05-01T12:00:00.000Z",
        "placed_ms": 1,
        "updated_at": "2030-05-01T12:00:00.000Z",
    }
    return Order(**{**base, **changes})  # type: ignore[arg-type]


def test_wait_defaults_caps_and_refuses_nonsense() -> None:
    assert parse_wait(None, 2.0) == 2.0
    assert parse_wait("", 2.0) == 2.0
    assert parse_wait("0", 2.0) == 0.0
    assert parse_wait("3.5", 2.0) == 3.5
    assert parse_wait("60", 2.0) == 10.0
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(ValueError):
            parse_wait(bad, 2.0)


def test_on_sale_needs_a_live_session_and_an_open_window() -> None:
    assert listing().on_sale("live", NOON)
    assert not listing().on_sale("scheduled", NOON)
    assert not listing().on_sale("ended", NOON)
    window = listing(sale_starts_at="2030-05-01T12:00:00.000Z", sale_ends_at="2030-05-01T13:00:00Z")
    assert window.on_sale("live", NOON)  # the start is inside
    assert not window.on_sale("live", datetime(2030, 5, 1, 11, 59, 59, tzinfo=UTC))
    assert not window.on_sale("live", datetime(2030, 5, 1, 13, 0, tzinfo=UTC))  # the end is not


def test_new_listing_normalizes_times_to_utc_and_checks_the_window() -> None:
    body = {
        "sku": "tea-1",
        "title": "Tea",
        "price_cents": 100,
        "per_user_limit": 1,
        "sale_starts_at": "2030-05-01T20:00:00+08:00",
    }
    made = new_listing(body, added_ms=5)
    assert made.sale_starts_at == "2030-05-01T12:00:00.000Z" and made.sale_ends_at is None
    with pytest.raises(InvalidInput):
        new_listing({**body, "sale_ends_at": "2030-05-01T11:00:00Z"}, added_ms=5)
    with pytest.raises(InvalidInput):
        new_listing({**body, "sale_starts_at": "2030-05-01T20:00:00"}, added_ms=5)
    assert listing_from_record(listing_to_record(made)) == made


def test_quantity_above_the_per_user_limit_is_invalid() -> None:
    check_quantity(listing(per_user_limit=2), 2)
    with pytest.raises(InvalidInput):
        check_quantity(listing(per_user_limit=2), 3)


def test_outcome_table_is_the_contract_state_machine() -> None:
    edges = {
        (source, rule.target)
        for rule in OUTCOME_TRANSITIONS.values()
        for source in rule.allowed_from
    }
    assert edges == {
        ("pending", "reserved"),
        ("pending", "rejected"),
        ("reserved", "paid"),
        ("reserved", "cancelled"),
        ("reserved", "expired"),
    }


def test_placement_answers_map_to_status_codes() -> None:
    assert placement_status_code(an_order(status="reserved")) == 201
    assert placement_status_code(an_order(status="pending")) == 202
    assert placement_status_code(an_order(status="rejected", reason="sold_out")) == 409
    assert placement_status_code(an_order(status="paid")) == 200


def test_fingerprint_tells_bodies_apart() -> None:
    same = request_fingerprint("s1", "crab", 1)
    assert same == request_fingerprint("s1", "crab", 1)
    assert same != request_fingerprint("s1", "crab", 2)
    assert same != request_fingerprint("s2", "crab", 1)
    assert same != request_fingerprint("s1", "crab2", 1)


def test_order_record_round_trip_and_public_view() -> None:
    rejected = an_order(status="rejected", reason="not_on_sale")
    assert order_from_record(order_to_record(rejected)) == rejected
    view = rejected.to_public()
    assert view["status"] == "rejected" and view["reason"] == "not_on_sale"
    assert "buyer_id" not in view and "intent" not in view
    assert "reason" not in an_order().to_public()


def test_ids_and_keys_that_reach_redis_keys_are_bounded() -> None:
    assert is_valid_id("0f3a9c2e4b7d4e1f8a6b5c4d3e2f1a0b")
    assert not is_valid_id("a}b") and not is_valid_id("") and not is_valid_id("x" * 65)
    assert is_valid_idempotency_key("press-1:2030")
    assert not is_valid_idempotency_key("with space") and not is_valid_idempotency_key("x" * 256)


@pytest.mark.parametrize(
    ("schema", "body", "valid"),
    [
        ("order-place", {"sku": "a", "quantity": 1}, True),
        ("order-place", {"sku": "a", "quantity": 0}, False),
        ("order-place", {"sku": "a", "quantity": 1, "price_cents": 1}, False),
        ("order-place", {"sku": "a", "quantity": 1, "user_id": "x"}, False),
        ("payment", {"payment_ref": "p", "amount_cents": 1}, True),
        ("payment", {"payment_ref": "", "amount_cents": 1}, False),
        ("session-create", {"title": "t"}, True),
        ("session-create", {"title": "t", "status": "live"}, False),
        ("listing-create", {"sku": "a", "title": "t", "price_cents": 1, "per_user_limit": 1}, True),
        (
            "listing-create",
            {"sku": "a{b}", "title": "t", "price_cents": 1, "per_user_limit": 1},
            False,
        ),
    ],
)
def test_request_schemas(schema: str, body: object, valid: bool) -> None:
    assert (first_error(f"http/{schema}.json", body) is None) is valid


def test_every_live_orders_request_schema_refuses_unknown_fields() -> None:
    for name in ("order-place", "payment", "session-create", "listing-create"):
        schema = orjson.loads(Path(SCHEMAS_DIR, "http", f"{name}.json").read_bytes())
        assert schema["additionalProperties"] is False, name


class FakeOrders:
    """An order store that is a dict; `read` counts calls."""

    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}
        self.reads = 0

    async def read(self, order_id: str) -> Order | None:
        self.reads += 1
        return self.orders.get(order_id)


def waiters_for(store: FakeOrders) -> tuple[OrderWaiters, CollectorRegistry]:
    registry = CollectorRegistry()
    return OrderWaiters(store.read, LiveOrdersMetrics.create(registry)), registry


async def waiting_for_a_decision(
    waiters: OrderWaiters, order_id: str
) -> asyncio.Task[Order | None]:
    """A request waiting (up to 5 s) for `order_id` to leave pending, once it is registered."""
    task = asyncio.create_task(waiters.wait(order_id, lambda o: o.status != "pending", 5))

    async def registered() -> bool:
        return len(waiters) > 0

    await eventually(registered, timeout=1, interval=0.001, what="waiter registered")
    return task


async def test_waiter_wakes_on_a_broadcast_and_unregisters() -> None:
    store = FakeOrders()
    store.orders["o1"] = an_order()
    waiters, registry = waiters_for(store)
    task = await waiting_for_a_decision(waiters, "o1")
    reads = store.reads
    waiters.apply([OrderUpdate("o1", "reserved", "t2", {"expires_at": "t9"})])
    result = await asyncio.wait_for(task, 1)
    assert result is not None and (result.status, result.expires_at) == ("reserved", "t9")
    assert store.reads == reads, "the update carries the new state: no re-read"
    assert len(waiters) == 0
    assert registry.get_sample_value("lc_live_orders_waiters") == 0


async def test_updates_move_an_order_forward_only_and_survive_the_wire() -> None:
    pending = an_order()
    reserved = OrderUpdate("o1", "reserved", "t2", {"expires_at": "t9"})
    paid = OrderUpdate("o1", "paid", "t3", {"payment_ref": "p1"})
    assert decode_updates(encode_updates([reserved, paid], "lo-1")) == ("lo-1", [reserved, paid])
    # A process tells its own announcements by their first bytes, and only its own.
    assert encode_updates([reserved], "lo-1").startswith(announcement_prefix("lo-1"))
    assert not encode_updates([reserved], "lo-12").startswith(announcement_prefix("lo-1"))
    assert not encode_updates([reserved], 'lo-"1').startswith(announcement_prefix("lo-1"))
    moved = paid.applied_to(reserved.applied_to(pending))
    assert (moved.status, moved.payment_ref, moved.expires_at) == ("paid", "p1", "t9")
    # A late (replayed or overtaken) announcement never moves an order back.
    assert reserved.applied_to(moved) is moved


async def test_a_watch_registered_before_publishing_hears_an_early_decision() -> None:
    store = FakeOrders()
    store.orders["o1"] = an_order()
    waiters, _ = waiters_for(store)
    with waiters.watch("o1") as watch:
        # Decided while the request was still publishing: the update waits in the watch.
        waiters.apply([OrderUpdate("o1", "rejected", "t2", {"reason": "sold_out"})])
        result = await waiters.until(watch, "o1", lambda o: o.status != "pending", 5, an_order())
    assert result is not None and (result.status, result.reason) == ("rejected", "sold_out")
    assert store.reads == 0


async def test_waiters_reread_after_the_listener_reconnected() -> None:
    store = FakeOrders()
    store.orders["o1"] = an_order()
    waiters, _ = waiters_for(store)
    task = await waiting_for_a_decision(waiters, "o1")
    store.orders["o1"] = an_order(status="reserved")
    waiters.wake_all()
    result = await asyncio.wait_for(task, 1)
    assert result is not None and result.status == "reserved"


async def test_waiter_reads_after_registering_and_times_out_with_the_current_state() -> None:
    store = FakeOrders()
    store.orders["o1"] = an_order(status="reserved")
    waiters, _ = waiters_for(store)
    # Decided before the wait began: answered from the first read, no wake-up needed.
    done = await asyncio.wait_for(waiters.wait("o1", lambda o: o.status != "pending", 5), 1)
    assert done is not None and done.status == "reserved" and store.reads == 1
    store.orders["o2"] = an_order(order_id="o2")
    still = await waiters.wait("o2", lambda o: o.status != "pending", 0.05)
    assert still is not None and still.status == "pending"
    assert await waiters.wait("missing", lambda o: True, 1) is None


async def test_a_waiter_that_missed_its_announcement_reads_again_after_the_safety_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(order_waiters, "SAFETY_POLL_S", 0.02)
    store = FakeOrders()
    store.orders["o1"] = an_order()
    waiters, registry = waiters_for(store)
    task = await waiting_for_a_decision(waiters, "o1")
    # Decided, but the announcement never came (lost with a pub/sub connection).
    store.orders["o1"] = an_order(status="reserved")
    result = await asyncio.wait_for(task, 1)
    assert result is not None and result.status == "reserved"
    assert store.reads == 2, "one read at the start, one after the poll's time ran out"
    assert len(waiters) == 0 and registry.get_sample_value("lc_live_orders_waiters") == 0


def test_an_update_moves_the_state_and_its_three_fields_and_keeps_the_rest() -> None:
    order = an_order()
    update = OrderUpdate(
        "o1",
        "rejected",
        "t2",
        {"reason": "sold_out", "expires_at": "t9", "payment_ref": "p1", "buyer_id": "other"},
    )
    moved = update.applied_to(order)
    assert moved == dataclasses.replace(
        order,
        status="rejected",
        updated_at="t2",
        reason="sold_out",
        expires_at="t9",
        payment_ref="p1",
        published=True,
    ), "only expires_at, reason and payment_ref come from an update's fields"


def test_the_consumer_holds_fetches_for_many_waiting_longer_for_more_and_not_for_a_few() -> None:
    waiters, _ = waiters_for(FakeOrders())
    hold = waiters.hold_fetches
    short, long = kafka_consumer.SHORT_HOLD_MS, kafka_consumer.LONG_HOLD_MS

    def waiting(stack: ExitStack, count: int) -> None:
        while len(waiters) < count:
            stack.enter_context(waiters.watch(f"o{len(waiters)}"))

    with ExitStack() as stack:
        # A few buyers (8 connections): their outcomes come at once, whatever the rate.
        waiting(stack, 8)
        assert hold(3_000, 0) == 0
        waiting(stack, order_waiters.CROWD_HOLD)
        assert hold(0, 0) == short
        # A throng (64 connections): throughput is the figure, the long hold.
        waiting(stack, order_waiters.THRONG_HOLD)
        assert hold(0, short) == long
    assert len(waiters) == 0
    with ExitStack() as stack:
        # Between two thresholds each hold stays as it is.
        waiting(stack, order_waiters.THRONG_RELEASE)
        assert hold(0, long) == long and hold(0, short) == short
    with ExitStack() as stack:
        waiting(stack, order_waiters.CROWD_RELEASE)
        assert hold(0, long) == short and hold(0, short) == short and hold(0, 0) == 0
    assert hold(0, short) == 0
    # Nobody waits, but outcomes flood in (expiries): held by the rate.
    assert hold(order_waiters.FLOOD_RATE, 0) == long
