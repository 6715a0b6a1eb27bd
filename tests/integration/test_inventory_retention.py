"""Bounded memory in inventory: order records, buyer units and journal dedup keys are
scheduled for the topics' replay window after the last event that needs them; a replay
within it is still answered from the stored decision, after it the entries are gone (and
the applied-offset guard still keeps a late replay from deciding twice)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.inventory.domain import LotInput, PlacedOrder
from services.inventory.journal_store import JournalStore
from services.inventory.retention_sweeper import RetentionSweeper
from services.inventory.stock_store import StockStore

pytestmark = pytest.mark.integration

T0 = 1_900_000_000_000  # a fixed "now" (epoch ms), after the wall clock of any test run
WINDOW_MS = 120_000  # retention 60 s + segment 60 s + no slack
TOPIC = "orders"


class Stores:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.stock = StockStore(redis, settings)
        self.journals = JournalStore(redis, settings.redis_prefix, settings.replay_window_ms)
        self.sweeper = RetentionSweeper(store=self.stock)


@pytest.fixture
async def stores(make_settings: Callable[..., Settings]) -> AsyncIterator[Stores]:
    settings = make_settings(
        "inventory", topic_retention_ms=60_000, topic_segment_ms=60_000, replay_slack_ms=0
    )
    assert settings.replay_window_ms == WINDOW_MS
    redis = create_redis(settings.redis_url)
    try:
        yield Stores(redis, settings)
    finally:
        await redis.aclose(close_connection_pool=True)


def placed(offset: int, order_id: str, buyer: str, quantity: int) -> PlacedOrder:
    return PlacedOrder(offset, order_id, buyer, quantity, 0, "s-1", quantity * 100)


async def test_decisions_are_kept_for_the_replay_window_then_dropped(stores: Stores) -> None:
    store, redis = stores.stock, stores.redis
    k = store.keys("crab")
    await store.upsert_lot("crab", LotInput("L1", "wh-1", 10, None, None))
    batch = [
        placed(0, "o-paid", "b-1", 1),
        placed(1, "o-big", "b-2", 20),
        placed(2, "o-held", "b-3", 1),
    ]
    first = await store.reserve_batch("crab", batch, topic=TOPIC, partition=0, now_ms=T0)
    assert [d.outcome for d in first.decisions] == ["confirmed", "sold_out", "confirmed"]
    paid = await store.commit(
        "crab", "o-paid", "pay-1", topic=TOPIC, partition=0, offset=3, now_ms=T0 + 1_000
    )
    assert paid.status == "committed" and paid.record is not None
    journaled = await stores.journals.append(
        "crab",
        "L1",
        "lot.allocated",
        at="2030-01-01T00:00:00.000Z",
        data={},
        dedup_key="o-paid",
        now_ms=T0 + 1_000,
    )
    assert journaled is not None and journaled.status == "appended"
    await store.track_retention(["crab"])

    # Scheduled: final records and the buyer of the ended hold; a live hold is not.
    assert await redis.zscore(k.orders_due, "o-paid") == T0 + 1_000 + WINDOW_MS
    assert await redis.zscore(k.orders_due, "o-big") == T0 + WINDOW_MS
    assert await redis.zscore(k.orders_due, "o-held") is None
    assert await redis.zscore(k.buyers_due, "b-1") == T0 + 1_000 + WINDOW_MS
    assert await redis.zscore(k.buyers_due, "b-3") is None
    assert await redis.zscore(k.journal_dedup_due("L1"), "o-paid") == T0 + 1_000 + WINDOW_MS

    # Within the window: the sweep keeps everything, and a replay is a no-op answered
    # from the stored decisions.
    within = T0 + WINDOW_MS - 1
    assert (await stores.sweeper.sweep_once(now_ms=within)).orders == 0
    levels = await store.stock_levels("crab")
    again = await store.reserve_batch("crab", batch, topic=TOPIC, partition=0, now_ms=within)
    assert [(d.outcome, d.fresh) for d in again.decisions] == [
        ("confirmed", False),
        ("sold_out", False),
        ("confirmed", False),
    ]
    repaid = await store.commit(
        "crab", "o-paid", "pay-1", topic=TOPIC, partition=0, offset=3, now_ms=within
    )
    assert (repaid.status, repaid.fresh) == ("committed", False)
    assert counters(await store.stock_levels("crab")) == counters(levels)
    # The replays are in the log now: their decisions are kept a window from them.
    assert await redis.zscore(k.orders_due, "o-big") == within + WINDOW_MS

    # After the window: the final records, the buyer and the dedup key are gone; the live
    # hold, its buyer and the journal itself stay.
    after = within + WINDOW_MS + 1
    forgotten = await stores.sweeper.sweep_once(now_ms=after)
    assert (forgotten.orders, forgotten.buyers, forgotten.journal_keys) == (2, 1, 1)
    assert await store.order_record("crab", "o-paid") is None
    assert await store.order_record("crab", "o-big") is None
    assert await store.order_record("crab", "o-held") is not None
    assert await store.buyer_units("crab") == {"b-3": 1}
    assert await redis.hlen(k.journal_dedup("L1")) == 0
    assert await redis.llen(k.journal("L1")) == 1
    assert await redis.zcard(k.orders_due) == 0
    # A replay after retention (impossible while Kafka keeps to its retention) still
    # decides nothing twice: the sku's applied offset refuses it.
    late = await store.reserve_batch("crab", batch[:2], topic=TOPIC, partition=0, now_ms=after)
    assert late.decisions == [] and sorted(late.skipped) == ["o-big", "o-paid"]
    assert counters(await store.stock_levels("crab")) == counters(levels)


async def test_a_released_hold_schedules_its_record_and_buyer(stores: Stores) -> None:
    store, redis = stores.stock, stores.redis
    k = store.keys("rice")
    await store.upsert_lot("rice", LotInput("R1", "wh-1", 5, None, None))
    await store.reserve_batch(
        "rice",
        [placed(0, "o-1", "b-1", 2), placed(1, "o-2", "b-1", 1)],
        topic=TOPIC,
        partition=0,
        now_ms=T0,
    )
    released = await store.release("rice", "o-1", topic=TOPIC, partition=0, offset=2, now_ms=T0 + 5)
    assert released.status == "released"
    assert await redis.zscore(k.orders_due, "o-1") == T0 + 5 + WINDOW_MS
    # The buyer still holds o-2: scheduled by o-1's end, but o-2's expiry reschedules it.
    expired = await store.expire_holds("rice", now_ms=T0 + 10**9)
    assert expired.released == 1
    assert await redis.zscore(k.buyers_due, "b-1") == T0 + 10**9 + WINDOW_MS
    assert await redis.zscore(k.orders_due, "o-2") == T0 + 10**9 + WINDOW_MS
    forgotten = await stores.sweeper.sweep_once(now_ms=T0 + 10**9 + WINDOW_MS)
    assert (forgotten.orders, forgotten.buyers) == (2, 0)  # b-1 had no units left anyway
    assert await redis.hlen(k.orders) == 0


def counters(levels: object) -> tuple[int, int, int, int]:
    return (levels.received, levels.available, levels.reserved, levels.sold)  # type: ignore[attr-defined]
