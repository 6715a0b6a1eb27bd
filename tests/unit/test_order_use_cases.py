"""live_orders' use cases (place, get, pay, cancel) against in-memory stores: inventory's
answers come back the way they do in production, through the live_orders consumer's
handlers and the waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from services.common.auth import Principal
from services.common.events import Outgoing
from services.common.messages import (
    OrderCancelled,
    OrderOutcome,
    OrderPaid,
    OrderPlaced,
)
from services.live_orders.domain import InvalidInput, Listing, NotFound, Order, RateLimited
from services.live_orders.handlers import EventHandlers
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_waiters import OrderWaiters
from services.live_orders.orders import OrderLimits, OrderService
from tests.unit.fakes import (
    FakeContexts,
    FakeOrderRecords,
    FakeOutbox,
    FakePublisher,
    FakeSoldOut,
    an_order,
    committed,
    confirmed,
    consumed,
    expired,
    rejected,
    released,
)

BUYER = Principal("buyer-1", "buyer")
ADMIN = Principal("admin-1", "admin")
CRAB = Listing("crab", "Hairy crab", 1500, 4, None, None)
# Long enough for a decision that is on its way, short enough to keep the suite fast.
SHORT_WAIT = 0.05


@dataclass
class World:
    registry: CollectorRegistry
    records: FakeOrderRecords
    contexts: FakeContexts
    sold_out: FakeSoldOut
    publisher: FakePublisher
    outbox: FakeOutbox
    waiters: OrderWaiters
    consumer: EventHandlers
    service: OrderService
    offset: int = 0
    later: list[asyncio.Task[None]] = field(default_factory=list)

    async def deliver(self, *outcomes: OrderOutcome) -> None:
        """Inventory's outcomes, consumed from the inventory topic by live_orders."""
        events = []
        for outcome in outcomes:
            self.offset += 1
            events.append(consumed(outcome, self.offset, topic="lc.inventory"))
        await self.consumer(events)

    def answer(
        self,
        asked: type[OrderPlaced | OrderPaid | OrderCancelled],
        *answers: Callable[[Order], OrderOutcome],
        later: bool = False,
    ) -> None:
        """Inventory answers every `asked` event it receives with `answers` (built from the
        order as stored): before the send returns, or `later` (while the request waits)."""

        async def on_publish(item: Outgoing) -> None:
            message = item[2].message
            if not isinstance(message, asked):
                return
            order = self.records.orders[message.order_id]
            outcomes = [build(order) for build in answers]
            if later:
                self.later.append(asyncio.create_task(self.deliver(*outcomes)))
            else:
                await self.deliver(*outcomes)

        self.publisher.on_publish = on_publish

    def stored(self, order: Order) -> Order:
        return self.records.orders[order.order_id]

    async def place(
        self,
        key: str = "key-1",
        *,
        wait_s: float = 1.0,
        buyer_id: str = BUYER.sub,
        session_id: str = "s1",
        sku: str = "crab",
        quantity: int = 2,
    ) -> Order:
        return await self.service.place(
            buyer_id=buyer_id,
            session_id=session_id,
            idempotency_key=key,
            sku=sku,
            quantity=quantity,
            wait_s=wait_s,
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def build_world(*, burst: int = 100, per_s: float = 100.0) -> World:
    registry = CollectorRegistry()
    metrics = LiveOrdersMetrics.create(registry)
    records = FakeOrderRecords()
    contexts = FakeContexts()
    contexts.add("s1", "live", CRAB)
    sold_out = FakeSoldOut()
    publisher = FakePublisher()
    outbox = FakeOutbox(records, publisher, "lc.orders", "test")
    waiters = OrderWaiters(records.get, metrics)
    consumer = EventHandlers(
        orders=records, sold_out=sold_out, waiters=waiters, metrics=metrics, source="test"
    )
    service = OrderService(
        orders=records,
        contexts=contexts,
        sold_out=sold_out,
        waiters=waiters,
        outbox=outbox,
        publisher=publisher,
        orders_topic="lc.orders",
        source="test",
        limits=OrderLimits(rate_limit_burst=burst, rate_limit_per_s=per_s),
        metrics=metrics,
    )
    return World(
        registry, records, contexts, sold_out, publisher, outbox, waiters, consumer, service
    )


@pytest.fixture
def world() -> World:
    return build_world()


# ------------------------------------------------------------------------------ place


async def test_place_answers_reserved_once_inventory_confirms(world: World) -> None:
    world.answer(OrderPlaced, confirmed)

    order = await world.place()

    assert order.status == "reserved"
    assert order.expires_at == "2030-05-01T12:15:00.000Z"
    assert world.stored(order).status == "reserved"


async def test_place_answers_a_decision_that_comes_while_it_waits(world: World) -> None:
    world.answer(OrderPlaced, confirmed, later=True)

    order = await world.place()

    assert order.status == "reserved"
    assert len(world.later) == 1


async def test_place_answers_inventorys_rejection(world: World) -> None:
    world.answer(OrderPlaced, lambda order: rejected(order, "limit_exceeded"))

    order = await world.place()

    assert (order.status, order.reason) == ("rejected", "limit_exceeded")


async def test_place_answers_pending_when_no_decision_comes(world: World) -> None:
    order = await world.place(wait_s=SHORT_WAIT)

    assert order.status == "pending"
    (placed,) = world.publisher.messages(OrderPlaced)
    assert (placed.order_id, placed.quantity, placed.total_cents) == (order.order_id, 2, 3000)
    assert world.stored(order).published


async def test_sold_out_sku_is_refused_without_the_broker(world: World) -> None:
    world.sold_out.skus.add("crab")

    async with asyncio.timeout(0.5):  # it does not wait for a decision
        order = await world.place(wait_s=5)

    assert (order.status, order.reason) == ("rejected", "sold_out")
    assert world.publisher.sent == []
    assert world.outbox.soon == [order]
    assert world.metric("lc_live_orders_fast_path_rejections_total") == 1


async def test_session_not_live_is_refused_as_not_on_sale(world: World) -> None:
    world.contexts.add("s1", "scheduled", CRAB)

    order = await world.place()

    assert (order.status, order.reason) == ("rejected", "not_on_sale")
    assert world.outbox.soon == [order]
    assert world.publisher.sent == []


async def test_sale_not_started_is_refused_as_not_on_sale(world: World) -> None:
    later = Listing("crab", "Hairy crab", 1500, 4, "2999-01-01T00:00:00Z", None)
    world.contexts.add("s1", "live", later)

    order = await world.place()

    assert (order.status, order.reason) == ("rejected", "not_on_sale")


async def test_unknown_session_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        await world.place(session_id="nope")


async def test_unlisted_sku_is_invalid(world: World) -> None:
    with pytest.raises(InvalidInput, match="not listed"):
        await world.place(sku="tea")


async def test_quantity_above_the_limit_is_invalid_and_claims_nothing(world: World) -> None:
    with pytest.raises(InvalidInput, match="per_user_limit"):
        await world.place(quantity=5)

    assert world.records.orders == {}
    assert world.records.keys == {}
    assert world.records.buckets == {}


async def test_replayed_key_returns_the_same_order(world: World) -> None:
    first = await world.place(wait_s=0)
    again = await world.place(wait_s=0)

    assert again.order_id == first.order_id
    assert len(world.records.orders) == 1
    assert len(world.publisher.messages(OrderPlaced)) == 1


async def test_replayed_key_answers_the_orders_current_state(world: World) -> None:
    world.answer(OrderPlaced, confirmed)
    first = await world.place()

    again = await world.place()

    assert (again.order_id, again.status) == (first.order_id, "reserved")


async def test_same_key_with_another_body_is_invalid(world: World) -> None:
    await world.place(wait_s=0)

    with pytest.raises(InvalidInput, match="different body"):
        await world.place(wait_s=0, quantity=1)


async def test_same_key_of_another_buyer_is_another_order(world: World) -> None:
    mine = await world.place(wait_s=0)
    theirs = await world.place(wait_s=0, buyer_id="buyer-2")

    assert theirs.order_id != mine.order_id
    assert len(world.publisher.messages(OrderPlaced)) == 2


async def test_rate_limited_buyer_is_told_when_to_retry() -> None:
    world = build_world(burst=1, per_s=0.5)
    await world.place("key-1", wait_s=0)

    with pytest.raises(RateLimited) as refused:
        await world.place("key-2", wait_s=0)

    assert refused.value.retry_after_s == 2  # one token every 2 s
    assert world.metric("lc_live_orders_rate_limited_total") == 1
    assert len(world.records.orders) == 1


async def test_replayed_key_spends_no_token() -> None:
    world = build_world(burst=1, per_s=0.5)
    first = await world.place("key-1", wait_s=0)

    again = await world.place("key-1", wait_s=0)

    assert again.order_id == first.order_id


async def test_failed_publish_lets_the_retry_publish_at_once(world: World) -> None:
    world.publisher.failure = ConnectionError("broker away")
    with pytest.raises(ConnectionError):
        await world.place(wait_s=0)
    world.publisher.failure = None

    order = await world.place(wait_s=0)

    (placed,) = world.publisher.messages(OrderPlaced)
    assert placed.order_id == order.order_id
    assert world.stored(order).published


async def test_concurrent_duplicates_publish_once(world: World) -> None:
    broker_acks = asyncio.Event()

    async def slow_ack(_: object) -> None:
        await broker_acks.wait()

    world.publisher.on_publish = slow_ack
    first = asyncio.create_task(world.place(wait_s=0))
    await asyncio.sleep(0)  # the first request is in the send now, holding the lease

    duplicate = await world.place(wait_s=0)
    broker_acks.set()
    original = await first

    assert duplicate.order_id == original.order_id
    assert duplicate.status == "pending"
    assert len(world.publisher.messages(OrderPlaced)) == 1


# -------------------------------------------------------------------------------- pay


async def test_pay_with_a_wrong_amount_is_invalid(world: World) -> None:
    order = world.records.add(an_order("reserved"))

    with pytest.raises(InvalidInput, match="amount_cents"):
        await world.service.pay(order.order_id, payment_ref="p1", amount_cents=1, wait_s=0)

    assert world.stored(order).intent is None


async def test_pay_before_the_reservation_is_refused(world: World) -> None:
    order = world.records.add(an_order("pending"))

    answer = await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("refused", "pending")
    assert world.publisher.sent == []


async def test_pay_is_done_once_inventory_commits(world: World) -> None:
    order = world.records.add(an_order("reserved"))
    world.answer(OrderPaid, lambda order: committed(order, "p1"))

    answer = await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("done", "paid")
    (paid,) = world.publisher.messages(OrderPaid)
    assert (paid.order_id, paid.payment_ref, paid.amount_cents) == (order.order_id, "p1", 3000)


async def test_paying_again_with_the_same_ref_is_done_without_a_second_send(
    world: World,
) -> None:
    order = world.records.add(an_order("reserved"))
    world.answer(OrderPaid, lambda order: committed(order, "p1"))
    await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=1)

    again = await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=1)

    assert (again.verdict, again.order.status) == ("done", "paid")
    assert len(world.publisher.messages(OrderPaid)) == 1


async def test_pay_with_another_ref_after_the_first_is_refused(world: World) -> None:
    order = world.records.add(an_order("reserved"))
    await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=0)

    answer = await world.service.pay(
        order.order_id, payment_ref="p2", amount_cents=3000, wait_s=SHORT_WAIT
    )

    assert answer.verdict == "refused"
    assert [paid.payment_ref for paid in world.publisher.messages(OrderPaid)] == ["p1"]


async def test_pay_is_refused_when_the_hold_expired_meanwhile(world: World) -> None:
    order = world.records.add(an_order("reserved"))
    world.answer(OrderPaid, expired)

    answer = await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("refused", "expired")


async def test_pay_of_an_expired_order_is_refused_without_a_send(world: World) -> None:
    order = world.records.add(an_order("expired"))

    answer = await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("refused", "expired")
    assert world.publisher.sent == []


async def test_pay_without_an_outcome_within_the_wait_is_accepted(world: World) -> None:
    order = world.records.add(an_order("reserved"))

    answer = await world.service.pay(
        order.order_id, payment_ref="p1", amount_cents=3000, wait_s=SHORT_WAIT
    )

    assert (answer.verdict, answer.order.status) == ("accepted", "reserved")
    assert len(world.publisher.messages(OrderPaid)) == 1


async def test_retried_payment_not_yet_settled_is_sent_again_under_the_same_id(
    world: World,
) -> None:
    order = world.records.add(an_order("reserved"))
    await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=0)

    await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=0)

    first, second = world.publisher.envelopes(OrderPaid)
    assert first.event_id == second.event_id


async def test_pay_for_an_unknown_order_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        await world.service.pay("0000nope", payment_ref="p1", amount_cents=3000, wait_s=0)


# ----------------------------------------------------------------------------- cancel


async def test_cancel_of_an_unpublished_pending_order_is_refused(world: World) -> None:
    order = world.records.add(an_order("pending", published=False))

    answer = await world.service.cancel(order.order_id, BUYER, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("refused", "pending")
    assert world.stored(order).intent is None
    assert world.publisher.sent == []


async def test_cancel_of_a_reserved_order_is_done_once_released(world: World) -> None:
    order = world.records.add(an_order("reserved"))
    world.answer(OrderCancelled, released)

    answer = await world.service.cancel(order.order_id, BUYER, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("done", "cancelled")
    (cancelled,) = world.publisher.messages(OrderCancelled)
    assert cancelled.order_id == order.order_id


async def test_cancel_of_a_published_pending_order_goes_to_inventory(world: World) -> None:
    order = world.records.add(an_order("pending"))
    world.answer(OrderCancelled, confirmed, released)

    answer = await world.service.cancel(order.order_id, BUYER, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("done", "cancelled")


async def test_cancel_while_a_payment_is_in_flight_is_refused(world: World) -> None:
    order = world.records.add(an_order("reserved"))
    await world.service.pay(order.order_id, payment_ref="p1", amount_cents=3000, wait_s=0)

    answer = await world.service.cancel(order.order_id, BUYER, wait_s=SHORT_WAIT)

    assert (answer.verdict, answer.order.status) == ("refused", "reserved")
    assert world.publisher.messages(OrderCancelled) == []


async def test_cancel_of_a_cancelled_order_is_done_again(world: World) -> None:
    order = world.records.add(an_order("cancelled", intent="cancel"))

    answer = await world.service.cancel(order.order_id, BUYER, wait_s=1)

    assert (answer.verdict, answer.order.status) == ("done", "cancelled")
    assert world.publisher.sent == []


async def test_cancel_of_a_paid_order_is_refused(world: World) -> None:
    order = world.records.add(an_order("paid", intent="pay", payment_ref="p1"))

    answer = await world.service.cancel(order.order_id, BUYER, wait_s=SHORT_WAIT)

    assert (answer.verdict, answer.order.status) == ("refused", "paid")
    assert world.publisher.sent == []


async def test_cancel_of_someone_elses_order_is_not_found(world: World) -> None:
    order = world.records.add(an_order("reserved", buyer_id="buyer-2"))

    with pytest.raises(NotFound):
        await world.service.cancel(order.order_id, BUYER, wait_s=0)

    assert world.stored(order).intent is None


# -------------------------------------------------------------------------------- get


async def test_get_of_someone_elses_order_is_not_found(world: World) -> None:
    order = world.records.add(an_order("reserved", buyer_id="buyer-2"))

    with pytest.raises(NotFound):
        await world.service.get(order.order_id, BUYER, wait_s=0)


async def test_admin_gets_any_order(world: World) -> None:
    order = world.records.add(an_order("reserved", buyer_id="buyer-2"))

    seen = await world.service.get(order.order_id, ADMIN, wait_s=0)

    assert seen == order


async def test_get_answers_a_pending_order_at_once_without_wait(world: World) -> None:
    order = world.records.add(an_order("pending"))

    async with asyncio.timeout(0.5):
        seen = await world.service.get(order.order_id, BUYER, wait_s=0)

    assert seen.status == "pending"


async def test_get_long_polls_until_the_order_is_decided(world: World) -> None:
    order = world.records.add(an_order("pending"))
    polling = asyncio.create_task(world.service.get(order.order_id, BUYER, wait_s=5))
    await asyncio.sleep(0)  # the poll is registered

    await world.deliver(confirmed(order))

    async with asyncio.timeout(1):
        seen = await polling
    assert seen.status == "reserved"
