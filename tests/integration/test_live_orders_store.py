"""live_orders' Lua scripts against a real Redis: the order state machine, the idempotency
claim and token bucket in one placement call, the publish lease, pay/cancel intents,
sold-out offsets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.redis_scripts import create_redis
from services.live_orders.domain import OUTCOME_TRANSITIONS, Order
from services.live_orders.order_store import (
    PUBLISH_LEASE_MS,
    OrderStore,
    Placement,
    TransitionRequest,
)
from services.live_orders.redis_keys import RedisKeys
from services.live_orders.sold_out import SoldOutSkus
from tests.conftest import Backends, new_prefix
from tests.live_orders_support import an_order

pytestmark = pytest.mark.integration

STATUSES = ("pending", "reserved", "rejected", "paid", "cancelled", "expired")


@pytest.fixture
async def redis(backends: Backends) -> AsyncIterator[Any]:
    client = create_redis(backends.redis_url)
    yield client
    await client.aclose()


async def create(store: OrderStore, order: Order, now_ms: int = 0, key: str = "") -> Placement:
    """Store `order` through the placement script (a key of its own, a bucket never empty)."""
    return await store.place(
        order,
        idempotency_key=key or order.order_id,
        fingerprint="f",
        burst=10**6,
        per_s=1000,
        now_ms=now_ms,
    )


async def test_transitions_follow_the_state_machine(redis: Any) -> None:
    store = OrderStore(redis, RedisKeys(new_prefix()))
    for status in STATUSES:
        for event_type, rule in OUTCOME_TRANSITIONS.items():
            order_id = f"{status}-{event_type}"
            await create(store, an_order(order_id, status))
            kwargs = {
                "order_id": order_id,
                "target": rule.target,
                "allowed_from": rule.allowed_from,
                "now": "2030-01-01T00:00:01.000Z",
                "fields": {},
            }
            first = await store.transition(**kwargs)
            again = await store.transition(**kwargs)
            stored = await store.get(order_id)
            assert stored is not None
            if status in rule.allowed_from:
                assert first.outcome == "applied" and stored.status == rule.target
                assert again.outcome == "same"
            else:
                assert first.outcome in ("stale", "same") and stored.status == status
    missing = await store.transition(
        order_id="nope", target="reserved", allowed_from=("pending",), now="x", fields={}
    )
    assert missing.outcome == "missing"


async def test_transitions_of_a_batch_share_one_round_trip_and_keep_their_own_results(
    redis: Any,
) -> None:
    store = OrderStore(redis, RedisKeys(new_prefix()))
    await asyncio.gather(*(create(store, an_order(f"o{n}")) for n in range(50)))
    requests = [
        TransitionRequest(f"o{n}", "reserved", ("pending",), {"expires_at": f"t{n}"})
        for n in range(50)
    ] + [
        TransitionRequest("o0", "reserved", ("pending",), {}),
        TransitionRequest("x", "paid", ("reserved",), {}),
    ]
    results = await store.transition_many(requests, now="t")
    assert [r.outcome for r in results] == ["applied"] * 50 + ["same", "missing"]
    stored = await store.get("o7")
    assert stored is not None and stored.status == "reserved" and stored.expires_at == "t7"


async def test_place_claims_replays_mismatches_and_rate_limits(redis: Any) -> None:
    store = OrderStore(redis, RedisKeys(new_prefix()))

    async def place(key: str, fingerprint: str = "f", order_id: str = "o") -> Placement:
        return await store.place(
            an_order(f"{order_id}-{key}"),
            idempotency_key=key,
            fingerprint=fingerprint,
            burst=3,
            per_s=0.5,
            now_ms=0,
        )

    first = await place("k1")
    assert (first.outcome, first.order_id, first.created) == ("claimed", "o-k1", True)
    # Replays cost no token: many of them, then still two fresh claims fit in the burst.
    replays = await asyncio.gather(*(place("k1", order_id="other") for _ in range(20)))
    assert {(r.outcome, r.order_id, r.created) for r in replays} == {("replay", "o-k1", False)}
    assert all(r.order is not None and r.order.order_id == "o-k1" for r in replays)
    mismatch = await place("k1", fingerprint="g")
    assert (mismatch.outcome, mismatch.order_id, mismatch.order) == ("mismatch", "o-k1", None)
    assert (await place("k2")).outcome == "claimed"
    assert (await place("k3")).outcome == "claimed"
    limited = await place("k4")
    assert limited.outcome == "limited" and 1000 <= limited.retry_after_ms <= 2000
    assert await store.get("o-k4") is None, "a refused attempt stores nothing"
    # A refused attempt claimed nothing: the same key is not a replay later.
    assert (await place("k4")).outcome == "limited"


async def test_create_once_and_the_publish_lease(redis: Any) -> None:
    store = OrderStore(redis, RedisKeys(new_prefix()))
    first = await create(store, an_order("o1"), now_ms=1_000, key="k")
    assert first.created and first.publish and first.order is not None
    assert first.order.status == "pending"
    rival = await create(store, an_order("o2", status="rejected"), now_ms=1_001, key="k")
    assert not rival.created and not rival.publish and rival.order is not None
    assert (rival.order.order_id, rival.order.status) == ("o1", "pending")
    # The creator died without publishing: once the lease ran out, a retry takes it.
    retry = await create(store, an_order("o3"), now_ms=1_000 + PUBLISH_LEASE_MS, key="k")
    assert not retry.created and retry.publish
    await store.mark_published(["o1"])
    later = await create(store, an_order("o4"), now_ms=10**12, key="k")
    assert not later.publish and later.order is not None and later.order.published


async def test_one_intent_per_order(redis: Any) -> None:
    store = OrderStore(redis, RedisKeys(new_prefix()))
    await create(store, an_order("o1", "reserved"))
    pay = await store.claim_intent(
        "o1", intent="pay", allowed_from=("reserved",), payment_ref="p1", amount_cents=100
    )
    assert pay.outcome == "claimed"
    cancel = await store.claim_intent("o1", intent="cancel", allowed_from=("pending", "reserved"))
    assert (cancel.outcome, cancel.intent) == ("held", "pay")
    other = await store.claim_intent(
        "o1", intent="pay", allowed_from=("reserved",), payment_ref="p2", amount_cents=100
    )
    assert (other.outcome, other.payment_ref) == ("held", "p1")
    await create(store, an_order("o2", "pending"))
    early = await store.claim_intent(
        "o2", intent="pay", allowed_from=("reserved",), payment_ref="p1", amount_cents=100
    )
    assert early.outcome == "not_allowed" and early.status == "pending"


async def test_sold_out_ignores_older_stock_events(redis: Any) -> None:
    keys = RedisKeys(new_prefix())
    sold_out = SoldOutSkus(redis, keys)
    assert await sold_out.record("crab", sold_out=True, partition=1, offset=10)
    assert not await sold_out.record("crab", sold_out=False, partition=1, offset=9)
    await sold_out.refresh()
    assert "crab" in sold_out
    assert await sold_out.record("crab", sold_out=False, partition=1, offset=11)
    await sold_out.refresh()
    assert "crab" not in sold_out


async def test_sold_out_orders_versioned_stock_events_by_version_not_offset(redis: Any) -> None:
    sold_out = SoldOutSkus(redis, RedisKeys(new_prefix()))
    assert await sold_out.record("crab", sold_out=False, partition=1, offset=10, version=8)
    # An older state at a later offset (another publisher was slower): refused.
    assert not await sold_out.record("crab", sold_out=True, partition=1, offset=11, version=7)
    # The same version again (a republished snapshot) changes nothing either.
    assert not await sold_out.record("crab", sold_out=True, partition=1, offset=12, version=8)
    # Without a version it cannot be ordered against a versioned one: refused too.
    assert not await sold_out.record("crab", sold_out=True, partition=1, offset=13)
    await sold_out.refresh()
    assert "crab" not in sold_out
    # A newer version applies, whatever its offset or partition.
    assert await sold_out.record("crab", sold_out=True, partition=2, offset=0, version=9)
    await sold_out.refresh()
    assert "crab" in sold_out
    # SKUs are independent; an unversioned SKU keeps the offset guard.
    assert await sold_out.record("tea", sold_out=True, partition=1, offset=5)
    assert await sold_out.record("tea", sold_out=False, partition=1, offset=6, version=1)
    await sold_out.refresh()
    assert "tea" not in sold_out and "crab" in sold_out


async def test_final_orders_expire_after_the_retention_and_live_ones_never(redis: Any) -> None:
    keys = RedisKeys(new_prefix())
    store = OrderStore(redis, keys, retention_s=3600)
    await create(store, an_order("live"))
    await create(store, an_order("refused", "rejected"))
    assert await redis.ttl(keys.order("live")) == -1
    assert 3590 < await redis.ttl(keys.order("refused")) <= 3600
    # Idempotency records expire too, never after the order they name could have.
    buyer = an_order("live").buyer_id
    assert 3590 < await redis.ttl(keys.idempotency(buyer, "live")) <= 3600
    long_kept = OrderStore(redis, keys, retention_s=30 * 24 * 3600)
    await create(long_kept, an_order("kept"))
    assert 23 * 3600 < await redis.ttl(keys.idempotency(buyer, "kept")) <= 24 * 3600
    # An order refused by live_orders itself lives as long as its key, not 30 days: a
    # sale's refusals outnumber its orders, and they hold neither stock nor money.
    await create(long_kept, an_order("refused-kept", "rejected"))
    assert 23 * 3600 < await redis.ttl(keys.order("refused-kept")) <= 24 * 3600
    assert 23 * 3600 < await redis.ttl(keys.idempotency(buyer, "refused-kept")) <= 24 * 3600

    reserved = await store.transition(
        order_id="live", target="reserved", allowed_from=["pending"], now="t1", fields={}
    )
    assert reserved.outcome == "applied"
    assert await redis.ttl(keys.order("live")) == -1, "a held order must not disappear"
    paid = await store.transition(
        order_id="live", target="paid", allowed_from=["reserved"], now="t2", fields={}
    )
    assert paid.outcome == "applied"
    assert 3590 < await redis.ttl(keys.order("live")) <= 3600
