"""The inventory Lua scripts on a real Redis, through StockStore: reservations, limits,
replays, FEFO allocation, expiry, cancellation, the sweeper and lot changes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from services.common.metrics import PlatformMetrics
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.inventory.domain import LotInput, PlacedOrder, StockLevels
from services.inventory.hold_sweeper import HoldSweeper
from services.inventory.metrics import InventoryMetrics
from services.inventory.stock_store import StockStore

pytestmark = pytest.mark.integration

TTL_MS = 60_000
T0 = 1_800_000_000_000  # a fixed "now" (epoch ms): deadlines are T0 + TTL_MS
TOPIC = "orders"


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[StockStore]:
    settings = make_settings("inventory", reservation_ttl_s=TTL_MS / 1000)
    redis = create_redis(settings.redis_url)
    try:
        yield StockStore(redis, settings)
    finally:
        await redis.aclose(close_connection_pool=True)


async def add_lot(
    store: StockStore,
    sku: str,
    lot_code: str,
    quantity: int,
    *,
    warehouse_id: str = "wh-1",
    expires_on: str | None = None,
) -> None:
    result = await store.upsert_lot(
        sku, LotInput(lot_code, warehouse_id, quantity, expires_on, origin=None)
    )
    assert result.status in ("created", "updated"), result.detail


def order(offset: int, order_id: str, buyer: str, quantity: int = 1, limit: int = 2) -> PlacedOrder:
    return PlacedOrder(
        offset=offset,
        order_id=order_id,
        buyer_id=buyer,
        quantity=quantity,
        per_user_limit=limit,
        session_id="s-1",
        total_cents=quantity * 4_900,
    )


def counters(levels: StockLevels) -> tuple[int, int, int, int]:
    """The counters without the version, where how many script calls changed them (so
    the version) depends on how concurrent calls interleaved."""
    return (levels.received, levels.available, levels.reserved, levels.sold)


async def hold(store: StockStore, sku: str, *orders: PlacedOrder, now_ms: int = T0) -> None:
    result = await store.reserve_batch(sku, orders, topic=TOPIC, partition=0, now_ms=now_ms)
    assert all(d.outcome == "confirmed" for d in result.decisions), result.decisions


async def test_reserve_batch_holds_exactly_the_stock_within_per_user_limits(
    store: StockStore,
) -> None:
    await add_lot(store, "crab", "L1", 300)
    # 250 buyers press three times each (limit 2): 750 attempts for 300 units, decided by
    # six consumers (partitions) at once in batches of 125.
    attempts = [(f"o-{rnd}-{b}", f"b{b}") for rnd in range(3) for b in range(250)]
    batches = [
        [order(offset, oid, buyer) for offset, (oid, buyer) in enumerate(attempts[at : at + 125])]
        for at in range(0, len(attempts), 125)
    ]

    async def decide(partition: int) -> list[tuple[str, str, bool]]:
        result = await store.reserve_batch(
            "crab", batches[partition], topic=TOPIC, partition=partition, now_ms=T0
        )
        assert not result.skipped
        return [(d.record.order_id, d.outcome, d.fresh) for d in result.decisions]

    first = await asyncio.gather(*(decide(p) for p in range(len(batches))))
    decisions = [d for part in first for d in part]
    assert len(decisions) == 750
    assert all(fresh for _, _, fresh in decisions)
    outcomes = Counter(outcome for _, outcome, _ in decisions)
    assert outcomes["confirmed"] == 300
    assert outcomes["confirmed"] + outcomes["sold_out"] + outcomes["limit_exceeded"] == 750
    levels = await store.stock_levels("crab")
    assert counters(levels) == (300, 0, 300, 0)
    units = await store.buyer_units("crab")
    assert sum(units.values()) == 300
    assert max(units.values()) <= 2

    # The same batches again (a consumer restarted before committing its offsets).
    again = await asyncio.gather(*(decide(p) for p in range(len(batches))))
    assert [(o, out) for part in again for o, out, _ in part] == [
        (o, out) for o, out, _ in decisions
    ]
    assert not any(fresh for part in again for _, _, fresh in part)
    # Nothing changed, version included.
    assert await store.stock_levels("crab") == levels
    assert await store.buyer_units("crab") == units


async def test_reserve_batch_decides_in_offset_order_with_limit_before_stock(
    store: StockStore,
) -> None:
    await add_lot(store, "tea", "L1", 3)
    result = await store.reserve_batch(
        "tea",
        [
            order(10, "a", "b1", quantity=2),
            order(11, "b", "b1", quantity=1),  # b1 would own 3 > 2
            order(12, "c", "b2", quantity=2),  # 1 left
            order(13, "d", "b3", quantity=1),
            order(14, "e", "b4", quantity=1),
        ],
        topic=TOPIC,
        partition=3,
        now_ms=T0,
    )
    assert [(d.record.order_id, d.outcome) for d in result.decisions] == [
        ("a", "confirmed"),
        ("b", "limit_exceeded"),
        ("c", "sold_out"),
        ("d", "confirmed"),
        ("e", "sold_out"),
    ]
    confirmed = result.decisions[0].record
    assert confirmed.expires_ms == T0 + TTL_MS
    assert (confirmed.session_id, confirmed.buyer_id, confirmed.total_cents) == ("s-1", "b1", 9800)
    assert result.levels == StockLevels(3, 0, 3, 0, version=2)  # the lot, then the holds

    # A new order.placed at an offset already applied is never applied.
    late = await store.reserve_batch(
        "tea", [order(12, "zz", "b9")], topic=TOPIC, partition=3, now_ms=T0
    )
    assert late.skipped == ["zz"]
    assert await store.order_record("tea", "zz") is None


async def test_commit_allocates_first_expired_first_across_lots_and_warehouses(
    store: StockStore,
) -> None:
    await add_lot(store, "peach", "A", 3, warehouse_id="wh-1", expires_on="2026-12-05")
    await add_lot(store, "peach", "B", 2, warehouse_id="wh-2", expires_on="2026-12-01")
    await add_lot(store, "peach", "C", 5, warehouse_id="wh-1")  # no expiry: last
    await add_lot(store, "peach", "D", 2, warehouse_id="wh-2", expires_on="2026-12-05")
    await hold(store, "peach", order(0, "o1", "b1", 6, limit=0), order(1, "o2", "b2", 4, limit=0))

    first = await store.commit(
        "peach", "o1", "pay-1", topic=TOPIC, partition=0, offset=2, now_ms=T0 + 1
    )
    assert first.status == "committed" and first.fresh and first.record is not None
    assert [(a.lot_code, a.warehouse_id, a.quantity) for a in first.record.allocations] == [
        ("B", "wh-2", 2),
        ("A", "wh-1", 3),
        ("D", "wh-2", 1),
    ]
    second = await store.commit(
        "peach", "o2", "pay-2", topic=TOPIC, partition=0, offset=3, now_ms=T0 + 2
    )
    assert second.record is not None
    assert [(a.lot_code, a.quantity, a.expires_on) for a in second.record.allocations] == [
        ("D", 1, "2026-12-05"),
        ("C", 3, None),
    ]
    assert second.levels == StockLevels(12, 2, 0, 10, version=7)  # 4 lots, holds, 2 commits

    # Replayed and redelivered payments answer the stored allocations and change nothing.
    for offset in (2, 9):
        replay = await store.commit(
            "peach", "o1", "pay-1", topic=TOPIC, partition=0, offset=offset, now_ms=T0 + 3
        )
        assert replay.status == "committed" and not replay.fresh
        assert replay.record == first.record
    view = await store.sku_view("peach")
    assert view is not None
    assert view.levels == StockLevels(12, 2, 0, 10, version=7) and view.levels.consistent
    assert {lot.lot_code: lot.allocated for lot in view.lots} == {"A": 3, "B": 2, "C": 3, "D": 2}
    assert [lot.lot_code for lot in view.lots] == ["B", "A", "D", "C"]


async def test_payment_after_the_deadline_expires_the_hold_and_gives_units_back(
    store: StockStore,
) -> None:
    await add_lot(store, "rice", "L1", 5)
    await hold(store, "rice", order(0, "o1", "b1", 2))
    late = await store.commit(
        "rice", "o1", "pay-1", topic=TOPIC, partition=0, offset=1, now_ms=T0 + TTL_MS
    )
    assert late.status == "expired" and late.fresh
    assert late.levels == StockLevels(5, 5, 0, 0, version=3)
    assert await store.buyer_units("rice") == {}
    # The sweeper finds nothing left to do, and a repeated payment stays expired.
    swept = await store.expire_holds("rice", now_ms=T0 + TTL_MS + 1)
    assert (swept.released, swept.holds_left, swept.outbox_len) == (0, 0, 0)
    again = await store.commit(
        "rice", "o1", "pay-1", topic=TOPIC, partition=0, offset=2, now_ms=T0 + TTL_MS
    )
    assert again.status == "expired" and not again.fresh
    assert again.levels == StockLevels(5, 5, 0, 0, version=3)


async def test_cancel_releases_once_and_never_touches_a_sale(store: StockStore) -> None:
    await add_lot(store, "tea", "L1", 4)
    await hold(store, "tea", order(0, "o1", "b1", 2), order(1, "o2", "b2", 2))

    released = await store.release("tea", "o1", topic=TOPIC, partition=0, offset=2, now_ms=T0)
    assert released.status == "released" and released.fresh
    assert released.levels == StockLevels(4, 2, 2, 0, version=3)
    assert await store.buyer_units("tea") == {"b2": 2}
    # Cancelled twice: the replayed offset and a second order.cancelled further on.
    for offset in (2, 5):
        twice = await store.release("tea", "o1", topic=TOPIC, partition=0, offset=offset, now_ms=T0)
        assert twice.status == "released" and not twice.fresh
        assert twice.levels == StockLevels(4, 2, 2, 0, version=3)
    # Paying a cancelled order changes nothing either.
    paid = await store.commit("tea", "o1", "p", topic=TOPIC, partition=0, offset=6, now_ms=T0)
    assert paid.status == "released" and paid.levels == StockLevels(4, 2, 2, 0, version=3)

    await store.commit("tea", "o2", "pay-2", topic=TOPIC, partition=0, offset=7, now_ms=T0)
    after_sale = await store.release("tea", "o2", topic=TOPIC, partition=0, offset=8, now_ms=T0)
    assert after_sale.status == "committed" and not after_sale.fresh
    assert after_sale.levels == StockLevels(4, 2, 0, 2, version=4)
    unknown = await store.release("tea", "nope", topic=TOPIC, partition=0, offset=9, now_ms=T0)
    assert unknown.status == "unknown" and unknown.record is None


async def test_cancel_after_the_deadline_answers_expired(store: StockStore) -> None:
    await add_lot(store, "tea", "L1", 1)
    await hold(store, "tea", order(0, "o1", "b1", 1))
    late = await store.release(
        "tea", "o1", topic=TOPIC, partition=0, offset=1, now_ms=T0 + TTL_MS + 5
    )
    assert late.status == "expired" and late.fresh
    assert late.levels == StockLevels(1, 1, 0, 0, version=3)


async def test_racing_sweepers_release_each_overdue_hold_exactly_once(
    store: StockStore,
) -> None:
    for sku in ("crab", "peach"):
        await add_lot(store, sku, "L1", 150)
        await hold(store, sku, *(order(i, f"{sku}-{i}", f"b{i}", 1) for i in range(120)), now_ms=T0)
        # Ten holds made later are not due yet.
        await hold(
            store,
            sku,
            *(order(200 + i, f"{sku}-late-{i}", f"c{i}", 1) for i in range(10)),
            now_ms=T0 + 10_000,
        )
        await store.track_holds([sku])
    due = T0 + TTL_MS + 1
    registry = PlatformMetrics.create().registry
    metrics = InventoryMetrics.create(registry)
    sweepers = [HoldSweeper(store=store, metrics=metrics, interval_s=1, batch=7) for _ in "ab"]

    released = await asyncio.gather(*(s.sweep_once(due) for s in sweepers for _ in range(3)))

    assert sum(released) == 240
    for sku in ("crab", "peach"):
        assert counters(await store.stock_levels(sku)) == (150, 140, 10, 0)
        outbox = await store.read_outbox(sku)
        assert sorted(r.order_id for r in outbox) == sorted(f"{sku}-{i}" for i in range(120))
        assert all(r.state == "expired" for r in outbox)
        late = await store.order_record(sku, f"{sku}-late-0")
        assert late is not None and late.state == "reserved"
    assert registry.get_sample_value("lc_inventory_sweeper_releases_total") == 240
    assert registry.get_sample_value("lc_inventory_holds_outstanding") == 20

    # Once the outbox is drained and the last holds are gone, the sku leaves the index.
    for sku in ("crab", "peach"):
        await store.remove_from_outbox(sku, [r.order_id for r in await store.read_outbox(sku)])
    assert await sweepers[0].sweep_once(due + 10_000) == 20
    # Expiries of this very sweep are not a backlog: the publisher was just woken for them.
    assert registry.get_sample_value("lc_inventory_expiry_backlog") == 0
    # Still unpublished one sweep later: that is (LcExpiryBacklog alerts on it).
    assert await sweepers[1].sweep_once(due + 10_000) == 0
    assert registry.get_sample_value("lc_inventory_expiry_backlog") == 20
    assert len(await store.skus_with_holds()) == 2  # 20 expiries still to publish
    for sku in ("crab", "peach"):
        await store.remove_from_outbox(sku, [r.order_id for r in await store.read_outbox(sku)])
    assert await sweepers[1].sweep_once(due + 10_000) == 0
    assert registry.get_sample_value("lc_inventory_expiry_backlog") == 0
    assert await store.skus_with_holds() == []


async def test_a_sku_stamped_after_the_sweeper_looked_stays_on_the_index(
    store: StockStore,
) -> None:
    await store.track_holds(["crab"])
    [(sku, stamp)] = await store.skus_with_holds()
    await store.track_holds(["crab"])  # a hold made while the sweeper was looking
    assert not await store.forget_sku(sku, stamp)
    [(_, newer)] = await store.skus_with_holds()
    assert await store.forget_sku(sku, newer)
    assert await store.skus_with_holds() == []


async def test_lot_changes_move_received_and_available_and_refuse_what_is_taken(
    store: StockStore,
) -> None:
    created = await store.upsert_lot("crab", LotInput("L1", "wh-1", 10, "2026-12-01", "Taihu"))
    assert created.status == "created" and created.levels == StockLevels(10, 10, 0, 0, 1)
    assert created.lot is not None and created.lot.origin == "Taihu"
    await add_lot(store, "crab", "L2", 4, warehouse_id="wh-2", expires_on="2026-12-09")
    await hold(store, "crab", order(0, "o1", "b1", 6, limit=0), order(1, "o2", "b2", 5, limit=0))
    await store.commit("crab", "o1", "pay", topic=TOPIC, partition=0, offset=2, now_ms=T0)
    # Now: L1 has 6 allocated (sold), o2 holds 5, available 3.
    before = await store.sku_view("crab")
    assert before is not None and before.levels == StockLevels(14, 3, 5, 6, version=4)

    below_sold = await store.upsert_lot("crab", LotInput("L1", "wh-1", 5, "2026-12-01", None))
    assert below_sold.status == "conflict" and "allocated" in below_sold.detail
    beyond_available = await store.upsert_lot("crab", LotInput("L2", "wh-2", 0, None, None))
    assert beyond_available.status == "conflict" and "available" in beyond_available.detail
    assert await store.sku_view("crab") == before  # version included: a refusal is no change

    lowered = await store.upsert_lot("crab", LotInput("L2", "wh-2", 1, "2026-12-09", None))
    assert lowered.status == "updated" and lowered.levels == StockLevels(11, 0, 5, 6, 5)
    raised = await store.upsert_lot("crab", LotInput("L1", "wh-1", 20, "2026-12-01", None))
    assert raised.levels == StockLevels(21, 10, 5, 6, 6) and raised.levels.consistent
    assert raised.lot is not None and raised.lot.allocated == 6


async def test_every_counter_change_moves_the_version_and_nothing_else_does(
    store: StockStore,
) -> None:
    """stock.changed consumers keep the snapshot with the highest version, so every script
    that changes a counter must bump it in the same step, and no-ops must not."""
    seen: list[int] = []

    async def changed(levels: StockLevels) -> None:
        assert levels.consistent
        assert not seen or levels.version > seen[-1], (levels, seen)
        # What the readers (and so every stock.changed) report is that same version.
        assert await store.stock_levels("crab") == levels
        view = await store.sku_view("crab")
        assert view is not None and view.levels == levels
        seen.append(levels.version)

    async def unchanged(levels: StockLevels) -> None:
        assert levels.version == seen[-1], (levels, seen)

    assert (await store.stock_levels("crab")).version == 0  # nothing stored yet
    await changed((await store.upsert_lot("crab", LotInput("L1", "wh-1", 3, None, None))).levels)
    await changed((await store.upsert_lot("crab", LotInput("L2", "wh-1", 2, None, None))).levels)

    placed = [order(0, "o1", "b1", 2), order(1, "o2", "b2", 1), order(2, "o3", "b3", 1)]
    held = await store.reserve_batch("crab", placed, topic=TOPIC, partition=0, now_ms=T0)
    await changed(held.levels)
    # 1 unit left available: taking 2 off a lot is refused and changes nothing.
    refused = await store.upsert_lot("crab", LotInput("L2", "wh-1", 0, None, None))
    assert refused.status == "conflict"
    await unchanged(refused.levels)
    # A batch of rejections only (over the limit, then sold out) and a replay: no change.
    rejected = await store.reserve_batch(
        "crab",
        [order(3, "o4", "b1", 1), order(4, "o5", "b5", 9, limit=0)],
        topic=TOPIC,
        partition=0,
    )
    assert [d.outcome for d in rejected.decisions] == ["limit_exceeded", "sold_out"]
    await unchanged(rejected.levels)
    replay = await store.reserve_batch("crab", placed, topic=TOPIC, partition=0, now_ms=T0)
    await unchanged(replay.levels)

    paid = await store.commit("crab", "o1", "p1", topic=TOPIC, partition=0, offset=5, now_ms=T0)
    assert paid.status == "committed"
    await changed(paid.levels)
    await unchanged(
        (await store.commit("crab", "o1", "p1", topic=TOPIC, partition=0, offset=5)).levels
    )
    cancelled = await store.release("crab", "o2", topic=TOPIC, partition=0, offset=6, now_ms=T0)
    assert cancelled.status == "released"
    await changed(cancelled.levels)
    await unchanged((await store.release("crab", "o2", topic=TOPIC, partition=0, offset=7)).levels)

    await unchanged((await store.expire_holds("crab", now_ms=T0)).levels)  # nothing due
    swept = await store.expire_holds("crab", now_ms=T0 + TTL_MS)
    assert swept.released == 1
    await changed(swept.levels)

    await hold(store, "crab", order(8, "o6", "b6", 1), now_ms=T0)
    await changed(await store.stock_levels("crab"))
    late = await store.commit(
        "crab", "o6", "p6", topic=TOPIC, partition=0, offset=9, now_ms=T0 + TTL_MS
    )
    assert late.status == "expired"
    await changed(late.levels)
    assert len(seen) == 8
