"""The projection's Lua step on the real redis-server: an attempt is counted from
inventory's decision, once, and not again for an order whose order.placed a notifier from
before that rule counted (the guarded increment, op "g")."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from services.common.messages import ReservationConfirmed, ReservationRejected
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.notifier.projection import effect_of
from services.notifier.projection_store import ProjectionStore
from services.notifier.redis_keys import NotifierKeys

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[ProjectionStore, Redis, NotifierKeys]]:
    settings = make_settings("notifier")
    client = create_redis(settings.redis_url)
    assert isinstance(client, Redis)
    keys = NotifierKeys(settings.redis_prefix)
    try:
        yield ProjectionStore(client, keys, guard_ttl_s=120, trace_retention_s=3600), client, keys
    finally:
        await client.aclose(close_connection_pool=True)


def confirmed(order_id: str) -> ReservationConfirmed:
    return ReservationConfirmed(
        order_id=order_id,
        session_id="s-1",
        sku="crab",
        buyer_id=f"b-{order_id}",
        quantity=1,
        total_cents=100,
        expires_at="2030-01-01T00:10:00.000Z",
    )


async def totals(client: Redis, keys: NotifierKeys) -> dict[str, int]:
    raw = await client.hgetall(keys.totals("s-1"))
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


async def test_a_decision_counts_its_attempt_once_and_not_after_an_old_count(
    store: tuple[ProjectionStore, Redis, NotifierKeys],
) -> None:
    projection, client, keys = store
    rejected = ReservationRejected(
        order_id="o-2", session_id="s-1", sku="crab", buyer_id="b-2", quantity=1, reason="sold_out"
    )
    applied = await projection.apply(
        "lc.inventory:0",
        [
            effect_of(confirmed("o-1"), 0, keys),
            effect_of(rejected, 1, keys),
            effect_of(confirmed("o-1"), 2, keys),  # re-published under a new offset
        ],
    )
    assert (applied.applied, applied.skipped) == (2, 1)
    assert await totals(client, keys) == {
        "attempts": 2,
        "reserved_orders": 1,
        "units_reserved": 1,
        "rejected_sold_out": 1,
    }

    # o-3's order.placed was counted by a notifier from before this rule (the member it
    # used): its decision counts the reservation, not the attempt a second time.
    await client.sadd(keys.seen("s-1"), "order.placed:o-3")
    await projection.apply("lc.inventory:0", [effect_of(confirmed("o-3"), 3, keys)])
    counted = await totals(client, keys)
    assert (counted["attempts"], counted["reserved_orders"]) == (2, 2)
    # The guard set keeps its bounded life.
    assert 0 < await client.ttl(keys.seen("s-1")) <= 120
