"""Stock in Redis: every change is one Lua script call, each wrapped in one method here.

Keys (all under `settings.redis_prefix`; every per-sku key carries the hash tag `{<sku>}`,
so each script touches one Redis Cluster slot):

    inv:{<sku>}:stock    hash received/available/reserved/sold, v (version, +1 on every
                         counter change) + off:<topic>:<partition>
    inv:{<sku>}:orders   hash order_id -> record (decision + state), see domain.OrderRecord
    inv:{<sku>}:orders-due  sorted set order_id -> epoch ms the final record may be dropped
    inv:{<sku>}:buyers   hash buyer_id -> units reserved + paid (the per-user limit)
    inv:{<sku>}:buyers-due  sorted set buyer_id -> epoch ms its units may be dropped
    inv:{<sku>}:holds    sorted set order_id -> payment deadline (epoch ms)
    inv:{<sku>}:lots     hash lot_code -> lot JSON
    inv:{<sku>}:outbox   hash order_id -> expiry released by the sweeper, not yet published
    inv:{<sku>}:journal:<lot_code>        list: the lot's journal entries (journal_store)
    inv:{<sku>}:journal-heads             hash lot_code -> hash of its last journal entry
    inv:{<sku>}:journal-dedup:<lot_code>  hash dedup key -> seq of the entry it appended
    inv:{<sku>}:journal-dedup-due:<lot_code>  sorted set dedup key -> epoch ms it may go
    inv:{holds-index}:skus  sorted set of skus that may hold units (where the sweeper looks)
    inv:{holds-index}:seq   counter for the index stamps
    inv:{retention-index}:skus  set of skus that may have entries scheduled to be dropped

Retention: what grows per order (records, buyer units, journal dedup keys) is kept for the
topics' replay window (`Settings.replay_window_ms`) after the last event that may need it,
scheduled in the `*-due` sorted sets by the scripts that write it, and dropped by the
decision sweep (retention_sweeper.py). Journals themselves are never trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson

from services.common.clock import epoch_ms
from services.common.messages import RejectReason
from services.common.redis_batch import TickPipeline
from services.common.redis_scripts import ArgT, KeyT, LuaScript, RedisClient
from services.common.settings import Settings
from services.common.values import value_class
from services.inventory.domain import (
    Allocation,
    HoldOutcome,
    HoldStatus,
    Lot,
    LotInput,
    LotUpsertResult,
    LotUpsertStatus,
    OrderRecord,
    OrderState,
    PlacedOrder,
    ReservationDecision,
    ReserveBatchResult,
    SkuView,
    StockLevels,
    SweepResult,
    fefo_key,
)

LUA = "services.inventory.lua"
COMMON_LUA = "services.common.lua"


@value_class
class RetentionSweep:
    """What one forget_decisions call dropped, and what stays scheduled."""

    orders_dropped: int
    buyers_dropped: int
    orders_scheduled: int
    buyers_scheduled: int


# The version `v` is read with the counters (one HMGET), so it always names that state.
LEVEL_FIELDS = ("received", "available", "reserved", "sold", "v")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@value_class
class SkuKeys:
    prefix: str
    sku: str

    @property
    def base(self) -> str:
        return f"{self.prefix}inv:{{{self.sku}}}:"

    @property
    def stock(self) -> str:
        return self.base + "stock"

    @property
    def orders(self) -> str:
        return self.base + "orders"

    @property
    def orders_due(self) -> str:
        return self.base + "orders-due"

    @property
    def buyers(self) -> str:
        return self.base + "buyers"

    @property
    def buyers_due(self) -> str:
        return self.base + "buyers-due"

    @property
    def holds(self) -> str:
        return self.base + "holds"

    @property
    def lots(self) -> str:
        return self.base + "lots"

    @property
    def outbox(self) -> str:
        return self.base + "outbox"

    def journal(self, lot_code: str) -> str:
        return f"{self.base}journal:{lot_code}"

    @property
    def journal_heads(self) -> str:
        return self.base + "journal-heads"

    def journal_dedup(self, lot_code: str) -> str:
        return f"{self.base}journal-dedup:{lot_code}"

    def journal_dedup_due(self, lot_code: str) -> str:
        return f"{self.base}journal-dedup-due:{lot_code}"


class StockStore:
    def __init__(
        self, redis: RedisClient, settings: Settings, pipeline: TickPipeline | None = None
    ) -> None:
        self._redis = redis
        # The scripts of every batch and sku of one loop tick share a write (redis_batch.py);
        # without one (tools, tests) each call is redis-py's own round trip.
        self._pipeline = pipeline
        self._prefix = settings.redis_prefix
        self._ttl_ms = round(settings.reservation_ttl_s * 1000)
        self._keep_ms = settings.replay_window_ms
        self._reserve_batch = LuaScript(LUA, "reserve_batch.lua")
        self._commit = LuaScript(LUA, "commit.lua")
        self._release = LuaScript(LUA, "release.lua")
        self._expire_holds = LuaScript(LUA, "expire_holds.lua")
        self._upsert_lot = LuaScript(LUA, "upsert_lot.lua")
        self._track_holds = LuaScript(LUA, "track_holds.lua")
        self._forget_sku = LuaScript(LUA, "forget_sku.lua")
        self._forget_decisions = LuaScript(LUA, "forget_decisions.lua")
        self._forget_due = LuaScript(COMMON_LUA, "forget_due.lua")

    def keys(self, sku: str) -> SkuKeys:
        return SkuKeys(self._prefix, sku)

    async def _run(self, script: LuaScript, keys: list[KeyT], args: list[ArgT]) -> Any:
        if self._pipeline is not None:
            return await self._pipeline.script(script, keys, args)
        return await script(self._redis, keys, args)

    @property
    def index_key(self) -> str:
        return f"{self._prefix}inv:{{holds-index}}:skus"

    @property
    def index_seq_key(self) -> str:
        return f"{self._prefix}inv:{{holds-index}}:seq"

    @property
    def retention_index_key(self) -> str:
        return f"{self._prefix}inv:{{retention-index}}:skus"

    # -- decisions (one script call each)

    async def reserve_batch(
        self,
        sku: str,
        orders: Sequence[PlacedOrder],
        *,
        topic: str,
        partition: int,
        now_ms: int | None = None,
    ) -> ReserveBatchResult:
        """Decide consecutive order.placed of one sku, in the given (offset) order."""
        k = self.keys(sku)
        args: list[ArgT] = [
            _now(now_ms),
            self._ttl_ms,
            _offset_field(topic, partition),
            self._keep_ms,
        ]
        for order in orders:
            args += [
                order.offset,
                order.order_id,
                order.buyer_id,
                order.quantity,
                order.per_user_limit,
                order.session_id,
                order.total_cents,
            ]
        levels, rows = await self._run(
            self._reserve_batch,
            [k.stock, k.orders, k.buyers, k.holds, k.orders_due, k.buyers_due],
            args,
        )
        offsets = {order.order_id: order.offset for order in orders}
        decisions: list[ReservationDecision] = []
        skipped: list[str] = []
        for raw_id, fresh, raw_record in rows:
            order_id = _text(raw_id)
            if not raw_record:
                skipped.append(order_id)
                continue
            decisions.append(
                ReservationDecision(
                    record=record_from_json(order_id, raw_record),
                    offset=offsets[order_id],
                    fresh=bool(fresh),
                )
            )
        return ReserveBatchResult(levels_from_redis(levels), decisions, skipped)

    async def commit(
        self,
        sku: str,
        order_id: str,
        payment_ref: str,
        *,
        topic: str,
        partition: int,
        offset: int,
        now_ms: int | None = None,
    ) -> HoldOutcome:
        """order.paid: turn a live hold into a sale and allocate its lots (FEFO)."""
        k = self.keys(sku)
        reply = await self._run(
            self._commit,
            [k.stock, k.orders, k.buyers, k.holds, k.lots, k.orders_due, k.buyers_due],
            [
                _now(now_ms),
                _offset_field(topic, partition),
                offset,
                order_id,
                payment_ref,
                self._keep_ms,
            ],
        )
        return _hold_outcome(order_id, reply)

    async def release(
        self,
        sku: str,
        order_id: str,
        *,
        topic: str,
        partition: int,
        offset: int,
        now_ms: int | None = None,
    ) -> HoldOutcome:
        """order.cancelled: give a live hold's units back."""
        k = self.keys(sku)
        reply = await self._run(
            self._release,
            [k.stock, k.orders, k.buyers, k.holds, k.orders_due, k.buyers_due],
            [_now(now_ms), _offset_field(topic, partition), offset, order_id, self._keep_ms],
        )
        return _hold_outcome(order_id, reply)

    async def expire_holds(
        self, sku: str, *, now_ms: int | None = None, limit: int = 500
    ) -> SweepResult:
        """Release up to `limit` overdue holds of a sku into its outbox."""
        k = self.keys(sku)
        released, holds_left, outbox_len, levels = await self._run(
            self._expire_holds,
            [k.stock, k.orders, k.buyers, k.holds, k.outbox, k.orders_due, k.buyers_due],
            [_now(now_ms), limit, self._keep_ms],
        )
        return SweepResult(
            released=int(released),
            holds_left=int(holds_left),
            outbox_len=int(outbox_len),
            levels=levels_from_redis(levels),
        )

    async def upsert_lot(self, sku: str, lot: LotInput) -> LotUpsertResult:
        """Create a lot or set its received quantity; conflicts change nothing."""
        k = self.keys(sku)
        status, payload, levels = await self._run(
            self._upsert_lot,
            [k.stock, k.lots],
            [
                lot.lot_code,
                lot.warehouse_id,
                lot.quantity,
                lot.expires_on or "",
                lot.origin or "",
                lot.producer or "",
                lot.harvested_on or "",
                lot.inspection or "",
            ],
        )
        # Its journal's dedup keys (the receipt's, later the payments') will need sweeping.
        await self.track_retention([sku])
        state = cast(LotUpsertStatus, _text(status))
        stored = lot_from_json(lot.lot_code, payload) if state != "conflict" else None
        detail = _text(payload) if state == "conflict" else ""
        return LotUpsertResult(state, stored, detail, levels_from_redis(levels))

    # -- reads

    async def sku_view(self, sku: str) -> SkuView | None:
        """Counters and lots of a sku, read in one transaction; None if it has no lots."""
        k = self.keys(sku)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(k.stock, LEVEL_FIELDS)
            pipe.hgetall(k.lots)
            levels, lots = await pipe.execute()
        if levels[0] is None:
            return None
        parsed = [lot_from_json(_text(code), raw) for code, raw in lots.items()]
        return SkuView(sku, levels_from_redis(levels), sorted(parsed, key=fefo_key))

    async def stock_levels(self, sku: str) -> StockLevels:
        return levels_from_redis(await self._redis.hmget(self.keys(sku).stock, LEVEL_FIELDS))

    async def order_record(self, sku: str, order_id: str) -> OrderRecord | None:
        raw = await self._redis.hget(self.keys(sku).orders, order_id)
        return record_from_json(order_id, raw) if raw is not None else None

    async def buyer_units(self, sku: str) -> dict[str, int]:
        """Units per buyer (reserved + paid), for the per-user limit."""
        raw = await self._redis.hgetall(self.keys(sku).buyers)
        return {_text(buyer): int(units) for buyer, units in raw.items()}

    # -- the sweeper's index and the outbox

    async def track_holds(self, skus: Sequence[str]) -> None:
        """Tell the sweeper these skus hold units (call after the script that held them)."""
        if skus:
            await self._run(self._track_holds, [self.index_key, self.index_seq_key], list(skus))

    async def skus_with_holds(self) -> list[tuple[str, int]]:
        """(sku, stamp) of every sku that may hold units or have unpublished expiries."""
        rows = cast(
            list[tuple[bytes, float]],
            await self._redis.zrange(self.index_key, 0, -1, withscores=True),
        )
        return [(_text(sku), int(stamp)) for sku, stamp in rows]

    async def forget_sku(self, sku: str, stamp: int) -> bool:
        """Drop a sku from the index if no hold was added since `stamp` was read."""
        return bool(await self._run(self._forget_sku, [self.index_key], [sku, stamp]))

    # -- retention (see the module docstring)

    async def track_retention(self, skus: Sequence[str]) -> None:
        """Tell the decision sweep these skus may have entries to drop some day. The set
        holds every sku ever decided or stocked (as many as the skus' stock hashes)."""
        if not skus:
            return
        if self._pipeline is not None:
            await self._pipeline.command("SADD", self.retention_index_key, *skus)
        else:
            await self._redis.sadd(self.retention_index_key, *skus)

    async def skus_with_retention(self) -> list[str]:
        members = cast(set[bytes], await self._redis.smembers(self.retention_index_key))
        return sorted(_text(sku) for sku in members)

    async def forget_decisions(self, sku: str, *, now_ms: int, limit: int = 500) -> RetentionSweep:
        """Drop up to `limit` due order records and buyer entries of a sku."""
        k = self.keys(sku)
        orders, buyers, orders_left, buyers_left = await self._run(
            self._forget_decisions,
            [k.orders, k.orders_due, k.buyers, k.buyers_due],
            [now_ms, limit],
        )
        return RetentionSweep(int(orders), int(buyers), int(orders_left), int(buyers_left))

    async def forget_journal_dedup(self, sku: str, *, now_ms: int, limit: int = 500) -> int:
        """Drop due dedup keys of every lot journal of a sku; returns how many went."""
        k = self.keys(sku)
        dropped = 0
        for raw_code in cast(list[bytes], await self._redis.hkeys(k.lots)):
            lot_code = _text(raw_code)
            while True:
                gone, _left = await self._run(
                    self._forget_due,
                    [k.journal_dedup_due(lot_code), k.journal_dedup(lot_code)],
                    [now_ms, limit],
                )
                dropped += int(gone)
                if int(gone) < limit:
                    break
        return dropped

    async def read_outbox(self, sku: str, limit: int = 500) -> list[OrderRecord]:
        """Up to about `limit` unpublished expiries of a sku (empty: none left)."""
        records: list[OrderRecord] = []
        cursor = 0
        # A scan page may come back empty while entries remain further on: follow the
        # cursor until `limit` entries are in hand or the scan is complete.
        while True:
            page = await self._redis.hscan(self.keys(sku).outbox, cursor, count=limit)
            cursor, entries = cast(tuple[int, dict[bytes, bytes]], page)
            records += [record_from_json(_text(oid), raw) for oid, raw in entries.items()]
            if cursor == 0 or len(records) >= limit:
                return records

    async def remove_from_outbox(self, sku: str, order_ids: Sequence[str]) -> None:
        """After Kafka acknowledged them: each entry is an immutable expiry, so removing
        by id never drops one another sweeper added meanwhile."""
        if order_ids:
            await self._redis.hdel(self.keys(sku).outbox, *order_ids)


def _now(now_ms: int | None) -> int:
    return epoch_ms() if now_ms is None else now_ms


def _offset_field(topic: str, partition: int) -> str:
    return f"off:{topic}:{partition}"


def _hold_outcome(order_id: str, reply: list[Any]) -> HoldOutcome:
    status, fresh, raw_record, levels = reply
    return HoldOutcome(
        status=cast(HoldStatus, _text(status)),
        fresh=bool(fresh),
        record=record_from_json(order_id, raw_record) if raw_record else None,
        levels=levels_from_redis(levels),
    )


# -- record codecs: what the Lua scripts store, as domain values


def levels_from_redis(values: Sequence[Any]) -> StockLevels:
    """From HMGET received available reserved sold v (a missing field reads 0)."""
    received, available, reserved, sold, version = (int(v) if v is not None else 0 for v in values)
    return StockLevels(
        received=received, available=available, reserved=reserved, sold=sold, version=version
    )


def record_from_json(order_id: str, raw: bytes | str) -> OrderRecord:
    # Field names are short because every record is written by Lua (cjson) and read
    # back on every replay; see reserve_batch.lua and commit.lua.
    doc: dict[str, Any] = orjson.loads(raw)
    allocations = doc.get("a") or []
    return OrderRecord(
        order_id=order_id,
        state=cast(OrderState, doc["s"]),
        session_id=str(doc["sid"]),
        buyer_id=str(doc["b"]),
        quantity=int(doc["q"]),
        total_cents=int(doc["t"]),
        # A quoted type: `RejectReason | None` evaluated builds a Union on every record.
        reason=cast("RejectReason | None", doc.get("r")),
        expires_ms=int(doc["x"]) if "x" in doc else None,
        allocations=tuple(
            Allocation(
                lot_code=str(a["lot_code"]),
                warehouse_id=str(a["warehouse_id"]),
                quantity=int(a["quantity"]),
                expires_on=a.get("expires_on") or None,
            )
            for a in allocations
        ),
        payment_ref=doc.get("pr"),
        committed_ms=int(doc["ca"]) if "ca" in doc else None,
    )


def lot_from_json(lot_code: str, raw: bytes | str) -> Lot:
    doc: dict[str, Any] = orjson.loads(raw)
    return Lot(
        lot_code=lot_code,
        warehouse_id=str(doc["warehouse_id"]),
        quantity=int(doc["quantity"]),
        allocated=int(doc["allocated"]),
        expires_on=doc.get("expires_on") or None,
        origin=doc.get("origin") or None,
        # Lots stored before traceability lack these: None, like an empty one.
        producer=doc.get("producer") or None,
        harvested_on=doc.get("harvested_on") or None,
        inspection=doc.get("inspection") or None,
    )
