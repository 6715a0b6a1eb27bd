"""The order outbox against a real Redis and Kafka: an order stored but never published
(its request died) is published by the sweep, and one refused here is counted into a
tally; ids of orders never stored, or published meanwhile, leave without a send; attempts
that store nothing never enter it. Refused orders are counted exactly once, whoever counts
them and however often; a tally whose send failed is sent again under its id."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.clock import epoch_ms
from services.common.events import deterministic_event_id
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
    by_order = {(e.type, data_of(e)["order_id"]) for e in events if e.type == "order.placed"}
    assert ("order.placed", orphan.order_id) in by_order
    assert ("order.placed", young.order_id) not in by_order
    # The refused one is counted in its session's tally, not published on its own.
    tallies = [data_of(e) for e in events if e.type == "attempts.tallied"]
    assert [(t["session_id"], t["sold_out"], t["not_on_sale"]) for t in tallies] == [("s1", 1, 0)]
    assert not [e for e in events if e.type == "order.rejected"]
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


def refused_in(session_id: str, buyer: str, reason: str = "sold_out") -> Order:
    return dataclasses.replace(an_order(buyer, "rejected"), session_id=session_id, reason=reason)


async def test_refused_orders_are_counted_once_however_often_they_are_counted(
    parts: tuple[Any, OrderStore, OrderOutbox, Topics, LiveOrdersMetrics],
) -> None:
    """The request's batch and another process's sweep may count the same orders at once:
    only the one that takes an order out of the outbox counts it."""
    redis, store, _, _, _ = parts
    now = epoch_ms()
    refused = [refused_in("s-a", f"b{i}") for i in range(6)]
    refused += [refused_in("s-b", f"c{i}", "not_on_sale") for i in range(3)]
    for order in refused:
        assert (await place(store, order, "k1", now)).created
    stranger = refused_in("s-a", "never-stored")  # not in the outbox: never counted

    made = await asyncio.gather(
        *(
            store.tally_refused(
                [*refused, stranger], tally_id=f"t{n}", now_ms=now, now="2030-01-01T00:00:00Z"
            )
            for n in range(4)
        )
    )

    tallies = [t for batch in made for t in batch]
    counted = {
        session: (
            sum(t.sold_out for t in tallies if t.session_id == session),
            sum(t.not_on_sale for t in tallies if t.session_id == session),
        )
        for session in ("s-a", "s-b")
    }
    assert counted == {"s-a": (6, 0), "s-b": (0, 3)}
    assert len({t.tally_id for t in tallies}) == len(tallies)
    keys = RedisKeys(store._keys.prefix)
    assert await redis.zcard(keys.outbox) == 0
    assert await redis.hlen(keys.tallies) == len(tallies)  # kept until published


async def test_a_tally_whose_send_failed_is_sent_again_under_its_id(
    backends: Backends, parts: tuple[Any, OrderStore, OrderOutbox, Topics, LiveOrdersMetrics]
) -> None:
    redis, store, outbox, topics, _ = parts
    long_ago = epoch_ms() - 2 * REPUBLISH_AFTER_MS
    order = refused_in("s-lost", "b1")
    assert (await place(store, order, "k1", long_ago)).created
    # Counted, then the process died before the broker acknowledged the tally.
    (tally,) = await store.tally_refused(
        [order], tally_id="lost", now_ms=long_ago, now="2030-01-01T00:00:00Z"
    )
    fresh = refused_in("s-lost", "b2")
    assert (await place(store, fresh, "k1", epoch_ms())).created
    (young,) = await store.tally_refused(
        [fresh], tally_id="young", now_ms=epoch_ms(), now="2030-01-01T00:00:00Z"
    )

    assert await outbox.sweep_tallies() == 1  # the old one; the young one may be on its way
    assert await outbox.sweep_tallies() == 0

    events = await read_topic(backends.kafka_bootstrap, topics.orders)
    sent = [e for e in events if e.type == "attempts.tallied"]
    assert [data_of(e)["tally_id"] for e in sent] == [tally.tally_id]
    assert sent[0].event_id == deterministic_event_id("attempts.tallied", tally.tally_id)
    keys = RedisKeys(store._keys.prefix)
    assert {m.decode() for m in await redis.hkeys(keys.tallies)} == {young.tally_id}
