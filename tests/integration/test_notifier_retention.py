"""Bounded memory in the notifier: a completed pick leaves its warehouse's `done` list
after the pick retention, its task, trace code and order pick set expire after the trace
retention, `order-buyers` entries are dropped after the trace retention, and the outcome
guards expire after the replay window; a replayed pick.requested within it opens nothing;
an attempt is counted once from its decision under those guards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from services.common.clock import epoch_ms
from services.common.messages import (
    LotAllocation,
    PickRequested,
    ReservationCommitted,
    ReservationConfirmed,
    ReservationRejected,
)
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.notifier.pick_store import PickStore
from services.notifier.projection import effect_of
from services.notifier.projection_store import ProjectionStore
from services.notifier.redis_keys import NotifierKeys
from services.notifier.retention import RetentionSweep

pytestmark = pytest.mark.integration

PICK_RETENTION_S = 60
TRACE_RETENTION_S = 3_600


@pytest.fixture
async def redis(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Redis, str]]:
    settings = make_settings("notifier")
    client = create_redis(settings.redis_url)
    try:
        yield client, settings.redis_prefix
    finally:
        await client.aclose(close_connection_pool=True)


def pick(pick_id: str) -> PickRequested:
    return PickRequested(
        pick_id=pick_id,
        order_id="o-1",
        session_id="s-1",
        sku="crab",
        warehouse_id="wh-1",
        lot_code="L1",
        quantity=1,
        expires_on=None,
        created_at="2030-01-01T00:00:00.000Z",
        trace_code="Tr4ceCode0123456789",
    )


async def test_completed_picks_and_traces_get_their_retentions(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    keys = NotifierKeys(prefix)
    store = PickStore(
        client, keys, pick_retention_s=PICK_RETENTION_S, trace_retention_s=TRACE_RETENTION_S
    )
    assert await store.open_batch("lc.picks:0", [(0, pick("p-1")), (1, pick("p-2"))]) == (2, 0)
    task = await store.get("p-1")
    assert task is not None
    # Open tasks never expire: they stay until someone completes them.
    assert await client.ttl(keys.pick("p-1")) == -1
    now = epoch_ms()
    await store.complete(task, "2030-01-01T00:05:00.000Z", "staff-1", now)

    for key in (keys.pick("p-1"), keys.trace("Tr4ceCode0123456789"), keys.order_picks("o-1")):
        assert 0 < await client.ttl(key) <= TRACE_RETENTION_S, key
    assert await client.ttl(keys.pick("p-2")) == -1
    assert await client.zscore(keys.picks_done_due("wh-1"), "p-1") == now + PICK_RETENTION_S * 1000

    # pick.requested replayed (a new offset, the same pick): the done task is not reopened.
    assert await store.open_batch("lc.picks:0", [(2, pick("p-1"))]) == (0, 1)

    sweep = RetentionSweep(store)
    assert (await sweep.sweep_once(now + PICK_RETENTION_S * 1000 - 1)).done_picks == 0
    assert await client.zscore(keys.picks_done("wh-1"), "p-1") is not None
    assert (await sweep.sweep_once(now + PICK_RETENTION_S * 1000)).done_picks == 1
    assert await client.zscore(keys.picks_done("wh-1"), "p-1") is None
    assert await client.zcard(keys.picks_done_due("wh-1")) == 0
    # Out of the done list, still a trace until its own expiry.
    assert await store.get("p-1") is not None
    open_task = await store.get("p-2")
    assert open_task is not None and open_task.status == "open"


async def test_order_buyers_are_dropped_after_the_trace_retention(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    keys = NotifierKeys(prefix)
    projection = ProjectionStore(client, keys, guard_ttl_s=120, trace_retention_s=TRACE_RETENTION_S)
    committed = ReservationCommitted(
        order_id="o-9",
        session_id="s-1",
        sku="crab",
        buyer_id="b-1",
        quantity=1,
        total_cents=100,
        payment_ref="pay-9",
        allocations=(LotAllocation("L1", "wh-1", 1),),
    )
    before = epoch_ms()
    applied = await projection.apply("lc.inventory:0", [effect_of(committed, 0, keys)])
    assert applied.applied == 1
    due = await client.zscore(keys.order_buyers_due, "o-9")
    assert (
        due is not None
        and before + TRACE_RETENTION_S * 1000 <= due <= epoch_ms() + TRACE_RETENTION_S * 1000
    )
    # The outcome guard expires with the replay window, not never.
    assert 0 < await client.ttl(keys.seen("s-1")) <= 120

    sweep = RetentionSweep(PickStore(client, keys))
    assert (await sweep.sweep_once(int(due) - 1)).order_buyers == 0
    assert await client.hget(keys.order_buyers, "o-9") == b"b-1"
    assert (await sweep.sweep_once(int(due))).order_buyers == 1
    assert await client.hget(keys.order_buyers, "o-9") is None


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
    redis: tuple[Redis, str],
) -> None:
    """An attempt is counted from inventory's decision, once, and not again for an order
    whose order.placed a notifier from before that rule counted (op "g" of the Lua step)."""
    client, prefix = redis
    keys = NotifierKeys(prefix)
    projection = ProjectionStore(client, keys, guard_ttl_s=120, trace_retention_s=TRACE_RETENTION_S)
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
