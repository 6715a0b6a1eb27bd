"""Every Lua call and every multi-key pipeline stays in one Redis Cluster slot.

The stores run with their script calls intercepted: each call records the KEYS the store
built and stops there, so what is checked is what the code sends, not a copy of it. The
transactions (MULTI/EXEC: one slot in a cluster) are checked on the key builders they use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot

from services.common.messages import PickRequested
from services.common.redis_batch import TickPipeline
from services.common.redis_scripts import ArgT, KeyT, LuaScript
from services.common.settings import Settings
from services.inventory.domain import LotInput, PlacedOrder
from services.inventory.journal_store import JournalStore
from services.inventory.lot_journal import JournalHead
from services.inventory.stock_store import StockStore
from services.live_orders.domain import Listing, TransitionRequest
from services.live_orders.order_store import TRANSITIONS_PER_CALL, OrderStore
from services.live_orders.redis_keys import RedisKeys, new_order_id
from services.live_orders.session_store import SessionStore
from services.live_orders.sold_out import SoldOutSkus
from services.notifier.pick_queue import PickTask
from services.notifier.pick_store import PickStore
from services.notifier.projection import EventEffect, Guard, Increment, RankAdd
from services.notifier.projection_store import ProjectionStore
from services.notifier.redis_keys import NotifierKeys
from tests.live_orders_support import an_order

PREFIX = "lc:"
# Ids that would land in different slots without their hash tags.
SKUS = ("crab-yangcheng", "tea-longjing-2026", "peach_9", "R1")
BUYERS = ("buyer-1", "buyer-2", "u-zhang-wei", "b" * 64)


class Recorded(Exception):
    """Raised by an intercepted script call once its keys are recorded."""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, list[KeyT]]]]:
    recorded: list[tuple[str, list[KeyT]]] = []

    async def call(self: LuaScript, client: Any, keys: list[KeyT], args: list[ArgT]) -> Any:
        recorded.append((self.name, list(keys)))
        raise Recorded

    def script(
        self: TickPipeline,
        script: LuaScript,
        keys: list[KeyT],
        args: list[ArgT],
        *,
        before: tuple[Any, ...] | None = None,
    ) -> asyncio.Future[Any]:
        recorded.append((script.name, list(keys)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(Recorded())
        return future

    monkeypatch.setattr(LuaScript, "__call__", call)
    monkeypatch.setattr(TickPipeline, "script", script)
    yield recorded


class AnyCommand:
    """A Redis client whose plain commands all answer 1 (the scripts are intercepted)."""

    def __getattr__(self, name: str) -> Callable[..., Awaitable[int]]:
        async def command(*args: Any, **kwargs: Any) -> int:
            return 1

        return command


async def recording(call: Awaitable[Any]) -> None:
    with pytest.raises(Recorded):
        await call


def assert_one_slot(calls: list[tuple[str, list[KeyT]]], expected_scripts: set[str]) -> None:
    assert {name for name, _ in calls} == expected_scripts
    for name, keys in calls:
        assert keys, f"{name} called without keys"
        slots = {key_slot(k.encode() if isinstance(k, str) else k) for k in keys}
        assert len(slots) == 1, f"{name} spans slots {slots}: {keys}"


def scripts_of(package: str) -> set[str]:
    """Every script of a package (not the files only ever included): a script added
    later fails these tests until its keys are checked here too."""
    files = [f for f in resources.files(package).iterdir() if f.name.endswith(".lua")]
    included = {
        line.split()[1]
        for f in files
        for line in f.read_text("utf-8").splitlines()
        if line.startswith("--#include ")
    }
    return {f.name for f in files} - included


def settings() -> Settings:
    return Settings(service="inventory", jwt_secret="x" * 32, redis_prefix=PREFIX)


async def test_inventory_scripts_stay_in_the_slot_of_their_sku(calls: list[Any]) -> None:
    store = StockStore(Redis(), settings())
    journals = JournalStore(Redis(), PREFIX)

    async def empty_head(sku: str, lot_code: str) -> JournalHead:
        return JournalHead()

    journals.head = empty_head  # type: ignore[method-assign]
    for sku in SKUS:
        order = PlacedOrder(1, new_order_id("buyer-1"), "buyer-1", 1, 2, "s1", 100)
        lot = LotInput("LOT-A", "wh-1", 10, None, None)
        await recording(store.reserve_batch(sku, [order], topic="lc.orders", partition=0))
        await recording(store.commit(sku, "o1", "pay-1", topic="t", partition=0, offset=1))
        await recording(store.release(sku, "o1", topic="t", partition=0, offset=1))
        await recording(store.expire_holds(sku))
        await recording(store.upsert_lot(sku, lot))
        await recording(
            journals.append(sku, "LOT-A", "lot.received", at="t", data={}, dedup_key="k")
        )
        await recording(store.forget_decisions(sku, now_ms=1))
    await recording(store.track_holds(list(SKUS)))
    await recording(store.forget_sku(SKUS[0], 1))
    assert_one_slot(
        calls,
        scripts_of("services.inventory.lua"),
    )
    # sku_view reads the counters and the lots in one MULTI/EXEC, a journal's head its
    # length and its head hash: one slot too.
    for sku in SKUS:
        keys = store.keys(sku)
        assert key_slot(keys.stock.encode()) == key_slot(keys.lots.encode())
        assert key_slot(keys.journal("LOT-A").encode()) == key_slot(keys.journal_heads.encode())
        # forget_due.lua (the common retention sweep) on a lot's journal dedup keys.
        assert key_slot(keys.journal_dedup_due("LOT-A").encode()) == key_slot(
            keys.journal_dedup("LOT-A").encode()
        )


async def test_live_orders_scripts_stay_in_one_slot(calls: list[Any]) -> None:
    keys = RedisKeys(PREFIX)
    redis = Redis()
    pipeline = TickPipeline(redis)
    orders = OrderStore(redis, keys, pipeline=pipeline)
    sessions = SessionStore(redis, keys, pipeline)
    sold_out = SoldOutSkus(redis, keys, pipeline)
    # A consumed batch's outcomes: on a cluster one transition call per slot of its orders.
    cluster_orders = OrderStore(
        redis, keys, pipeline=TickPipeline(RedisCluster(host="127.0.0.1", port=1))
    )
    batch = [
        TransitionRequest(new_order_id(buyer), "reserved", ("pending",), {"held": "1"})
        for buyer in BUYERS
    ]
    await recording(cluster_orders.transition_many(batch, now="t"))
    slots = {key_slot(keys.order(request.order_id).encode()) for request in batch}
    assert len(slots) > 1
    assert len(calls) == len(slots)
    for buyer in BUYERS:
        order_id = new_order_id(buyer)
        await recording(orders.claim_intent(order_id, intent="pay", allowed_from=("reserved",)))
        # place_order.lua: the bucket, the idempotency claim and the order of one buyer
        # (order_store.place builds exactly these; every order id carries its buyer's tag).
        calls.append(
            (
                "place_order.lua",
                [keys.bucket(buyer), keys.idempotency(buyer, "idem-1"), keys.order(order_id)],
            )
        )
    for session_id in ("s1", "0123456789abcdef0123456789abcdef"):
        await recording(
            sessions.move(session_id, target="live", required="scheduled", time_field="t", now="n")
        )
        await recording(
            sessions.add_listing(session_id, Listing("crab", "Crab", 100, 2, None, None))
        )
    for sku in SKUS:
        await recording(sold_out.record(sku, sold_out=True, partition=0, offset=1))
    refused = an_order(new_order_id("buyer-1"), "rejected", buyer_id="buyer-1")
    # The outbox and the tallies: one slot, so an order leaves the one and is counted in
    # the other atomically.
    await recording(orders.tally_refused([refused], tally_id="t1", now_ms=1, now="t"))
    assert_one_slot(
        calls,
        scripts_of("services.live_orders.lua"),
    )


async def test_a_batch_of_outcomes_is_one_call_on_a_single_node(calls: list[Any]) -> None:
    """On one node the slots do not matter: a consumed batch is one script call (up to
    TRANSITIONS_PER_CALL outcomes), its orders in the batch's order."""
    keys = RedisKeys(PREFIX)
    orders = OrderStore(Redis(), keys, pipeline=TickPipeline(Redis()))
    batch = [
        TransitionRequest(new_order_id(f"buyer-{n}"), "reserved", ("pending",), {})
        for n in range(TRANSITIONS_PER_CALL + 50)
    ]
    await recording(orders.transition_many(batch, now="t"))
    assert [name for name, _ in calls] == ["transition_orders.lua"] * 2
    assert [key for _, keys_ in calls for key in keys_] == [
        keys.order(request.order_id) for request in batch
    ]
    assert len(calls[0][1]) == TRANSITIONS_PER_CALL


async def test_notifier_scripts_stay_in_the_notifier_slot(calls: list[Any]) -> None:
    keys = NotifierKeys(PREFIX)
    projection = ProjectionStore(Redis(), keys, guard_ttl_s=60)
    effects = [
        EventEffect(
            offset=i,
            guard=Guard(keys.seen(session_id), f"reservation.confirmed:o{i}"),
            ops=(
                Increment(keys.totals(session_id), "reserved_orders", 1),
                RankAdd(keys.leaderboard, session_id, 100),
            ),
        )
        for i, session_id in enumerate(("s1", "s2", "a-much-longer-session-id"))
    ]
    await recording(projection.apply("lc.inventory:0", effects))
    picks = PickStore(AnyCommand(), keys)  # type: ignore[arg-type]
    pick = PickRequested(
        pick_id="p1",
        order_id="o1",
        session_id="s1",
        sku="crab",
        warehouse_id="wh-1",
        lot_code="LOT-A",
        quantity=1,
        expires_on=None,
        created_at="2026-01-01T00:00:00Z",
    )
    await recording(picks.open_batch("lc.picks:0", [(1, pick)]))
    task = PickTask.from_document(orjson_document(pick), status="open", seq=1)
    await recording(picks.complete(task, "2026-01-01T00:00:00Z", "staff-1", now_ms=1))
    await recording(picks.forget_order_buyers(now_ms=1))
    assert_one_slot(calls, scripts_of("services.notifier.lua") | {"forget_due.lua"})
    # open_snapshot/changes read the sequence and a warehouse's sets in one MULTI/EXEC.
    slots = {
        key_slot(k.encode())
        for k in (keys.pick_seq, keys.picks_open("wh-9"), keys.picks_done("wh-9"), keys.stock)
    }
    # forget_done runs forget_due.lua on each warehouse's done list and its schedule.
    slots |= {key_slot(keys.picks_done_due("wh-9").encode())}
    assert len(slots) == 1


def orjson_document(pick: PickRequested) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(orjson.dumps(pick))
    return document
