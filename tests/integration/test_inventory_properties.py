"""Random interleavings of everything that can happen to one SKU's stock, run against the
real redis-server through StockStore (the Lua scripts): reservations, payments,
cancellations, expiry sweeps, restocks (lot upserts) and replays of any earlier event.
After every step DESIGN section 3's invariants 1-3 must hold:
1. available + reserved + sold == received, all >= 0 (and the counters match the orders);
2. an order is reserved, committed, released or expired at most once, whatever is replayed
   (a replay answers `fresh=False` and changes nothing);
3. no buyer holds more than the per-user limit (reserved + paid).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from services.common.redis_scripts import create_redis
from services.inventory.domain import LotInput, PlacedOrder, StockLevels
from services.inventory.stock_store import StockStore
from tests.conftest import Backends, new_prefix, settings_for

pytestmark = pytest.mark.integration

SKU = "crab-prop"
TOPIC = "orders"
LIMIT = 3
TTL_MS = 60_000
T0 = 1_800_000_000_000
BUYERS = ("b1", "b2", "b3", "b4")
LOTS = ("L1", "L2", "L3")


@dataclass
class Replayable:
    """An event already applied, kept to be delivered again."""

    kind: str  # "reserve" | "commit" | "release"
    offset: int
    orders: list[PlacedOrder] = field(default_factory=list)
    order_id: str = ""


class StockMachine(RuleBasedStateMachine):
    """One SKU per example (a fresh key prefix); `now` moves only forward."""

    loop: asyncio.AbstractEventLoop
    redis: Redis
    backends: Backends

    def __init__(self) -> None:
        super().__init__()
        config = settings_for(
            self.backends, new_prefix(), "inventory", reservation_ttl_s=TTL_MS / 1000
        )
        self.store = StockStore(self.redis, config)
        self.now = T0
        self.next_offset = 0
        self.next_order = 0
        self.orders: dict[str, PlacedOrder] = {}
        self.history: list[Replayable] = []
        # How often each order got each fresh outcome (invariant 2: at most once each).
        self.fresh: Counter[tuple[str, str]] = Counter()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def offset(self) -> int:
        self.next_offset += 1
        return self.next_offset

    def levels(self) -> StockLevels:
        levels: StockLevels = self.run(self.store.stock_levels(SKU))
        return levels

    @initialize(quantity=st.integers(0, 12))
    def first_lot(self, quantity: int) -> None:
        result = self.run(self.store.upsert_lot(SKU, LotInput("L1", "wh-1", quantity, None, None)))
        assert result.status == "created"

    # ---------------------------------------------------------------------- the steps

    @rule(
        lot=st.sampled_from(LOTS),
        quantity=st.integers(0, 15),
        expires=st.sampled_from([None, "2030-01-01", "2030-06-01"]),
    )
    def restock(self, lot: str, quantity: int, expires: str | None) -> None:
        before = self.levels()
        result = self.run(
            self.store.upsert_lot(SKU, LotInput(lot, f"wh-{lot}", quantity, expires, None))
        )
        if result.status == "conflict":
            # Below what is sold or held: refused, and nothing changed.
            assert self.levels() == before
        else:
            assert result.levels.received >= result.levels.sold

    @rule(
        wanted=st.lists(
            st.tuples(st.sampled_from(BUYERS), st.integers(1, 3)), min_size=1, max_size=5
        )
    )
    def reserve(self, wanted: list[tuple[str, int]]) -> None:
        batch = []
        for buyer, quantity in wanted:
            self.next_order += 1
            placed = PlacedOrder(
                offset=self.offset(),
                order_id=f"o{self.next_order}",
                buyer_id=buyer,
                quantity=quantity,
                per_user_limit=LIMIT,
                session_id="s-1",
                total_cents=quantity * 100,
            )
            self.orders[placed.order_id] = placed
            batch.append(placed)
        result = self.run(
            self.store.reserve_batch(SKU, batch, topic=TOPIC, partition=0, now_ms=self.now)
        )
        assert [d.record.order_id for d in result.decisions] == [o.order_id for o in batch]
        for decision in result.decisions:
            assert decision.fresh
            self.fresh[(decision.record.order_id, decision.outcome)] += 1
        self.history.append(Replayable("reserve", batch[0].offset, orders=batch))

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def pay(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.orders)))
        offset = self.offset()
        outcome = self.run(
            self.store.commit(
                SKU,
                order_id,
                f"pay-{order_id}",
                topic=TOPIC,
                partition=0,
                offset=offset,
                now_ms=self.now,
            )
        )
        if outcome.fresh:
            self.fresh[(order_id, outcome.status)] += 1
        if outcome.status == "committed" and outcome.fresh:
            assert outcome.record is not None
            assert sum(a.quantity for a in outcome.record.allocations) == outcome.record.quantity
        self.history.append(Replayable("commit", offset, order_id=order_id))

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.orders)))
        offset = self.offset()
        outcome = self.run(
            self.store.release(
                SKU, order_id, topic=TOPIC, partition=0, offset=offset, now_ms=self.now
            )
        )
        if outcome.fresh:
            self.fresh[(order_id, outcome.status)] += 1
        self.history.append(Replayable("release", offset, order_id=order_id))

    @rule(minutes=st.integers(0, 2))
    def time_passes_and_the_sweeper_runs(self, minutes: int) -> None:
        self.now += minutes * 60_000 // 2 + 1
        before = {oid: self.state_of(oid) for oid in self.orders}
        self.run(self.store.expire_holds(SKU, now_ms=self.now))
        for order_id, state in before.items():
            after = self.state_of(order_id)
            if state == "reserved" and after == "expired":
                self.fresh[(order_id, "expired")] += 1

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Any earlier event delivered again (a rebalance, a crash before the commit)."""
        event = data.draw(st.sampled_from(self.history))
        before = self.levels()
        if event.kind == "reserve":
            result = self.run(
                self.store.reserve_batch(
                    SKU, event.orders, topic=TOPIC, partition=0, now_ms=self.now
                )
            )
            assert not any(d.fresh for d in result.decisions)
        elif event.kind == "commit":
            outcome = self.run(
                self.store.commit(
                    SKU,
                    event.order_id,
                    f"pay-{event.order_id}",
                    topic=TOPIC,
                    partition=0,
                    offset=event.offset,
                    now_ms=self.now,
                )
            )
            assert not outcome.fresh
        else:
            outcome = self.run(
                self.store.release(
                    SKU,
                    event.order_id,
                    topic=TOPIC,
                    partition=0,
                    offset=event.offset,
                    now_ms=self.now,
                )
            )
            assert not outcome.fresh
        assert self.levels() == before

    # -------------------------------------------------------------------- invariants

    def state_of(self, order_id: str) -> str | None:
        record = self.run(self.store.order_record(SKU, order_id))
        return None if record is None else str(record.state)

    @invariant()
    def stock_adds_up_and_matches_the_orders(self) -> None:
        levels = self.levels()
        assert min(levels.available, levels.reserved, levels.sold) >= 0, levels
        assert levels.available + levels.reserved + levels.sold == levels.received, levels
        states = {oid: self.state_of(oid) for oid in self.orders}
        held = sum(o.quantity for oid, o in self.orders.items() if states[oid] == "reserved")
        sold = sum(o.quantity for oid, o in self.orders.items() if states[oid] == "committed")
        assert (levels.reserved, levels.sold) == (held, sold)
        view = self.run(self.store.sku_view(SKU))
        assert view is not None and sum(lot.allocated for lot in view.lots) == sold
        assert all(0 <= lot.allocated <= lot.quantity for lot in view.lots)

    @invariant()
    def every_outcome_happens_at_most_once(self) -> None:
        assert all(count == 1 for count in self.fresh.values()), self.fresh

    @invariant()
    def no_buyer_holds_more_than_the_limit(self) -> None:
        units: Counter[str] = Counter()
        for order_id, placed in self.orders.items():
            if self.state_of(order_id) in ("reserved", "committed"):
                units[placed.buyer_id] += placed.quantity
        assert all(total <= LIMIT for total in units.values()), units
        stored = self.run(self.store.buyer_units(SKU))
        assert stored == {buyer: total for buyer, total in units.items() if total}


def test_random_interleavings_keep_the_stock_invariants(backends: Backends) -> None:
    loop = asyncio.new_event_loop()
    redis = create_redis(backends.redis_url)
    StockMachine.loop, StockMachine.redis, StockMachine.backends = loop, redis, backends
    try:
        run_state_machine_as_test(
            StockMachine,
            settings=settings(
                max_examples=40,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.run_until_complete(redis.aclose(close_connection_pool=True))
        loop.close()
