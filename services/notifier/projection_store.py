"""The live counters in Redis: applying consumed batches and reading snapshots back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson

from services.common.clock import epoch_ms
from services.common.redis_scripts import LuaScript, RedisClient
from services.notifier.projection import (
    TOTAL_FIELDS,
    Applied,
    Assign,
    AssignIfNewer,
    EventEffect,
    Increment,
    IncrementOnce,
    KeepForTrace,
    Op,
    SessionInfo,
    SetAdd,
    SkuStock,
    session_payload,
)
from services.notifier.redis_keys import NotifierKeys

# Settings.trace_retention_s's default.
DEFAULT_TRACE_RETENTION_S = 400 * 24 * 3600


class _KeyIndex:
    """Numbers the keys of one script call (KEYS[1] is the offsets hash)."""

    def __init__(self, first: str) -> None:
        self.keys: list[str] = [first]
        self._index: dict[str, int] = {first: 1}

    def __call__(self, key: str) -> int:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)
        return index


class ProjectionStore:
    def __init__(
        self,
        redis: RedisClient,
        keys: NotifierKeys,
        guard_ttl_s: int,
        trace_retention_s: int = DEFAULT_TRACE_RETENTION_S,
    ) -> None:
        self._apply = LuaScript("services.notifier.lua", "apply_projection.lua")
        self._redis = redis
        self._keys = keys
        self._guard_ttl_s = guard_ttl_s
        self._trace_retention_ms = trace_retention_s * 1000

    async def apply(self, topic_partition: str, effects: Sequence[EventEffect]) -> Applied:
        """Apply the effects of one partition batch (offset order) in one atomic step that
        also records the highest offset: a redelivered batch changes nothing."""
        index = _KeyIndex(self._keys.offsets)
        entries: list[list[Any]] = []
        for effect in effects:
            if not effect.ops:
                continue
            entry: list[Any] = [effect.offset, 0, ""]
            if effect.guard is not None:
                entry[1] = index(effect.guard.key)
                entry[2] = effect.guard.member
            entry.extend(_encode_op(op, index) for op in effect.ops)
            entries.append(entry)
        if not entries:
            return Applied(0, 0)
        applied, skipped, _last = await self._apply(
            self._redis,
            list(index.keys),
            [
                topic_partition,
                self._guard_ttl_s,
                orjson.dumps(entries),
                epoch_ms() + self._trace_retention_ms,
            ],
        )
        return Applied(int(applied), int(skipped))

    async def session(self, session_id: str) -> SessionInfo | None:
        raw = await self._redis.hgetall(self._keys.session(session_id))
        return session_from_hash(session_id, cast(dict[bytes, bytes], raw))

    async def session_payloads(self, session_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The snapshot content of each known session (unknown ones are left out)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hgetall(self._keys.session(session_id))
                pipe.hgetall(self._keys.totals(session_id))
            replies = await pipe.execute()
        sessions: list[tuple[SessionInfo, dict[str, int]]] = []
        for i, session_id in enumerate(session_ids):
            info = session_from_hash(session_id, replies[2 * i])
            if info is not None:
                sessions.append((info, totals_from_hash(replies[2 * i + 1])))
        skus = sorted({sku for info, _ in sessions for sku in info.skus})
        stock: dict[str, SkuStock | None] = {}
        if skus:
            values = cast(list[bytes | None], await self._redis.hmget(self._keys.stock, skus))
            stock = {sku: stock_from_json(raw) for sku, raw in zip(skus, values, strict=True)}
        return {info.session_id: session_payload(info, totals, stock) for info, totals in sessions}

    async def leaderboard(self, limit: int, pavilion: str | None = None) -> list[dict[str, Any]]:
        """Sessions by paid GMV, highest first; with `pavilion`, only that pavilion's."""
        if pavilion is None:
            ranked = cast(
                list[tuple[bytes, float]],
                await self._redis.zrevrange(self._keys.leaderboard, 0, limit - 1, withscores=True),
            )
        else:
            ranked = await self._pavilion_ranked(pavilion, limit)
        if not ranked:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for member, _ in ranked:
                session_id = member.decode()
                pipe.hmget(self._keys.session(session_id), ["title", "host_id", "pavilion"])
                pipe.hget(self._keys.totals(session_id), "paid_orders")
            replies = await pipe.execute()
        board = []
        for rank, (member, score) in enumerate(ranked, start=1):
            title, host_id, session_pavilion = replies[2 * rank - 2]
            paid = replies[2 * rank - 1]
            board.append(
                {
                    "rank": rank,
                    "session_id": member.decode(),
                    "title": title.decode() if title else None,
                    "host_id": host_id.decode() if host_id else None,
                    "gmv_cents": int(score),
                    "paid_orders": int(paid or 0),
                    "pavilion": session_pavilion.decode() if session_pavilion else None,
                }
            )
        return board

    async def _pavilion_ranked(self, pavilion: str, limit: int) -> list[tuple[bytes, float]]:
        """The pavilion's sessions with paid GMV, ranked as ZREVRANGE ranks the whole board
        (score, then member, both descending): read per pavilion, whose sessions are few,
        rather than filtering the board of every session."""
        members = cast(set[bytes], await self._redis.smembers(self._keys.pavilion(pavilion)))
        if not members:
            return []
        ordered = sorted(member.decode() for member in members)
        scores = await self._redis.zmscore(self._keys.leaderboard, ordered)
        ranked = [
            (member.encode(), float(score))
            for member, score in zip(ordered, scores, strict=True)
            if score is not None
        ]
        ranked.sort(key=lambda item: (item[1], item[0]), reverse=True)
        return ranked[:limit]

    async def pavilion_sessions(self, pavilion: str) -> list[SessionInfo]:
        """Every session of a pavilion the notifier knows of."""
        members = cast(set[bytes], await self._redis.smembers(self._keys.pavilion(pavilion)))
        session_ids = sorted(member.decode() for member in members)
        if not session_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hmget(
                    self._keys.session(session_id), ["host_id", "title", "status", "pavilion"]
                )
            replies = await pipe.execute()
        sessions = []
        for session_id, (host_id, title, status, session_pavilion) in zip(
            session_ids, replies, strict=True
        ):
            if host_id is None:
                continue
            sessions.append(
                SessionInfo(
                    session_id=session_id,
                    host_id=host_id.decode(),
                    title=(title or b"").decode(),
                    status=(status or b"").decode(),
                    listings=(),
                    pavilion=(session_pavilion or b"").decode() or None,
                )
            )
        return sessions


def _encode_op(op: Op, index: _KeyIndex) -> list[Any]:
    # Amounts travel as strings: cjson would turn large integers into floats.
    if isinstance(op, Increment):
        return ["i", index(op.key), op.field, str(op.amount)]
    if isinstance(op, Assign):
        return ["s", index(op.key), op.field, op.value]
    if isinstance(op, AssignIfNewer):
        version = "" if op.version is None else str(op.version)
        return ["n", index(op.key), op.field, op.value, index(op.versions), version]
    if isinstance(op, SetAdd):
        return ["a", index(op.key), op.member]
    if isinstance(op, KeepForTrace):
        return ["d", index(op.key), op.member]
    if isinstance(op, IncrementOnce):
        return ["g", index(op.key), op.field, str(op.amount), index(op.seen), op.member]
    return ["z", index(op.key), op.member, str(op.amount)]


# -- record codecs: what the projection's Lua step stored, as values


def session_from_hash(session_id: str, raw: Mapping[bytes, bytes]) -> SessionInfo | None:
    if not raw or b"host_id" not in raw:
        return None
    listings = orjson.loads(raw.get(b"listings", b"[]"))
    return SessionInfo(
        session_id=session_id,
        host_id=raw[b"host_id"].decode(),
        title=raw.get(b"title", b"").decode(),
        status=raw.get(b"status", b"").decode(),
        listings=tuple(listings),
        pavilion=raw.get(b"pavilion", b"").decode() or None,
    )


def totals_from_hash(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {name: int(raw.get(name.encode(), 0)) for name in TOTAL_FIELDS}


def stock_from_json(raw: bytes | None) -> SkuStock | None:
    """A SKU's stored counters ([received, available, reserved, sold], see
    projection.stock_effect), or None before its first stock.changed."""
    if raw is None:
        return None
    received, available, reserved, sold = orjson.loads(raw)
    return SkuStock(received, available, reserved, sold)
