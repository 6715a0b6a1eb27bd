"""The order outbox against a real Redis and Kafka: an order stored but never published
(its request died) is published by the sweep; ids of orders never stored, or published
meanwhile, leave without a send; attempts that store nothing never enter it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.clock import epoch_ms
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics, ensure_topics
from services.common.metrics import PlatformMetrics
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.live_orders.domain import Order
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_outbox import REPUBLISH_AFTER_MS, OrderOutbox
from services.live_orders.order_store import OrderStore
from services.live_orders.redis_keys import RedisKeys, new_order_id
from tests import live_orders_support as support
from tests.conftest import Backends
from tests.events import data_of
from tests.kafka_offsets import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def parts(
    backends: Backends, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[Any, OrderStore, OrderOutbox, Topics, LiveOrdersMetrics]]:
    settings = make_settings("live_orders")
    await ensure_topics(settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    redis = create_redis(backends.redis_url)
    producer = create_producer(settings)
    await producer.start()
    store = OrderStore(redis, RedisKeys(settings.redis_prefix))
    metrics = LiveOrdersMetrics.create(CollectorRegistry())
    outbox = OrderOutbox(
        store=store,
        publisher=EventPublisher(producer, PlatformMetrics.create()),
        topic=topics.orders,
        source="test",
        metrics=metrics,
    )
    try:
        yield redis, store, outbox, topics, metrics
    finally:
        await producer.stop()
        await redis.aclose()


def an_order(buyer: str, status: str = "pending") -> Order:
    """A new order of `buyer`, its id in the buyer's slot, as live_orders makes them."""
    return support.an_order(new_order_id(buyer), status, buyer_id=buyer)


async def place(store: OrderStore, order: Order, key: str, now_ms: int, burst: int = 10) -> Any:
    return await store.place(
        order, idempotency_key=key, fingerprint="f", burst=burst, per_s=0.001, now_ms=now_ms
    )


async def test_the_sweep_publishes_orders_whose_request_died_and_drops_the_rest(
    backends: Backends, parts: tuple[Any, OrderStore, OrderOutbox, Topics, LiveOrdersMetrics]
) -> None:
    redis, store, outbox, topics, metrics = parts
    long_ago = epoch_ms() - 2 * REPUBLISH_AFTER_MS
    # Stored, never published: one pending, one refused here.
    orphan = an_order("b1")
    refused = an_order("b2", "rejected")
    assert (await place(store, orphan, "k1", long_ago)).created
    assert (await place(store, refused, "k1", long_ago)).created
    # Stored and published by its request: leaves the outbox at once.
    published = an_order("b3")
    assert (await place(store, published, "k1", long_ago)).created
    await outbox.publish_now(published)
    # Still young: the request that stored it may be publishing it right now.
    young = an_order("b4")
    assert (await place(store, young, "k1", epoch_ms())).created
    # A replayed key and a rate-limited attempt store nothing and leave nothing behind.
    assert (await place(store, an_order("b1"), "k1", long_ago)).outcome == "replay"
    assert (await place(store, an_order("b5"), "k1", long_ago, burst=1)).created
    assert (await place(store, an_order("b5"), "k2", long_ago, burst=1)).outcome == "limited"

    keys = RedisKeys(store._keys.prefix)
    waiting = {m.decode() for m in await redis.zrange(keys.outbox, 0, -1)}
    assert published.order_id not in waiting
    assert len(waiting) == 4, "orphan, refused, young and b5's order; no replay or limited id"

    assert await outbox.sweep() == 3  # orphan, refused and b5's order; not the young one
    assert metrics.republished_orders._value.get() == 3
    left = {m.decode() for m in await redis.zrange(keys.outbox, 0, -1)}
    assert left == {young.order_id}
    stored = await store.get(orphan.order_id)
    assert stored is not None and stored.published

    events = await read_topic(backends.kafka_bootstrap, topics.orders)
    by_order = {(e.type, data_of(e)["order_id"]) for e in events}
    assert ("order.placed", orphan.order_id) in by_order
    assert ("order.rejected", refused.order_id) in by_order
    assert ("order.placed", young.order_id) not in by_order
    # A second sweep finds nothing to do: nothing is published twice.
    assert await outbox.sweep() == 0


async def test_a_sweep_drops_ids_whose_order_was_never_stored(
    parts: tuple[Any, OrderStore, OrderOutbox, Topics, LiveOrdersMetrics],
) -> None:
    redis, store, outbox, _, _ = parts
    keys = RedisKeys(store._keys.prefix)
    await redis.zadd(keys.outbox, {"ffff0000000000000000000000000000": 1})
    assert await outbox.sweep() == 0
    assert await redis.zcard(keys.outbox) == 0
