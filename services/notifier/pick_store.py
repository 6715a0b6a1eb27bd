"""The warehouse pick queue in Redis: tasks opened exactly once, completed idempotently.

Every change (a task opened, a task completed) takes the next number of one sequence and
is filed under it in the warehouse's `open` or `done` sorted set. A reader that remembers
the last number it saw asks for everything above it, so any notifier process can push the
picks that another process consumed, and a list cursor is that number too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import orjson

from services.common.messages import PickRequested
from services.common.redis_scripts import LuaScript, RedisClient
from services.notifier.pick_queue import PickStatus, PickTask
from services.notifier.redis_keys import NotifierKeys

LUA = "services.notifier.lua"
# Settings' defaults (LC_PICK_RETENTION_S, LC_TRACE_RETENTION_S).
DEFAULT_PICK_RETENTION_S = 7 * 24 * 3600
DEFAULT_TRACE_RETENTION_S = 400 * 24 * 3600


class PickStore:
    def __init__(
        self,
        redis: RedisClient,
        keys: NotifierKeys,
        *,
        pick_retention_s: int = DEFAULT_PICK_RETENTION_S,
        trace_retention_s: int = DEFAULT_TRACE_RETENTION_S,
    ) -> None:
        self._apply_picks = LuaScript(LUA, "apply_picks.lua")
        self._complete_pick = LuaScript(LUA, "complete_pick.lua")
        self._forget_due = LuaScript("services.common.lua", "forget_due.lua")
        self._redis = redis
        self._keys = keys
        self._pick_retention_ms = pick_retention_s * 1000
        self._trace_retention_s = trace_retention_s

    async def open_batch(
        self, topic_partition: str, picks: Sequence[tuple[int, PickRequested]]
    ) -> tuple[int, int]:
        """Open the tasks of one partition batch of `pick.requested` (offset, data),
        recording the offset in the same step. Returns (opened, skipped)."""
        if not picks:
            return 0, 0
        keys: list[str | bytes] = [self._keys.offsets, self._keys.pick_seq]
        index: dict[str, int] = {}

        def key_index(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            return index[key]

        entries = [
            [
                offset,
                key_index(self._keys.pick(pick.pick_id)),
                key_index(self._keys.picks_open(pick.warehouse_id)),
                pick.pick_id,
                pick.warehouse_id,
                orjson.dumps(pick).decode(),
                key_index(self._keys.order_picks(pick.order_id)),
                key_index(self._keys.trace(pick.trace_code)) if pick.trace_code else 0,
            ]
            for offset, pick in picks
        ]
        # Before the tasks open, so the index never misses a warehouse with open tasks.
        await self._redis.sadd(
            self._keys.pick_warehouses, *{pick.warehouse_id for _, pick in picks}
        )
        opened, skipped = await self._apply_picks(
            self._redis, keys, [topic_partition, orjson.dumps(entries)]
        )
        return int(opened), int(skipped)

    async def open_counts(self) -> dict[str, int]:
        """warehouse_id -> number of open tasks, for every warehouse that had a pick."""
        members = cast(set[bytes], await self._redis.smembers(self._keys.pick_warehouses))
        warehouses = sorted(m.decode() for m in members)
        async with self._redis.pipeline(transaction=False) as pipe:
            for warehouse_id in warehouses:
                pipe.zcard(self._keys.picks_open(warehouse_id))
            counts = await pipe.execute()
        return {w: int(n) for w, n in zip(warehouses, counts, strict=True)}

    async def get(self, pick_id: str) -> PickTask | None:
        tasks = await self.load([pick_id])
        return tasks[0] if tasks else None

    async def complete(
        self, task: PickTask, completed_at: str, completed_by: str, now_ms: int
    ) -> PickTask:
        """Mark the task done (once: a second call keeps the first time and author). The
        first completion also enters the completions outbox, in the same step, and starts
        the retentions: listed as done for the pick retention, readable as a trace for the
        trace retention."""
        keys: list[str | bytes] = [
            self._keys.pick(task.pick_id),
            self._keys.picks_open(task.warehouse_id),
            self._keys.picks_done(task.warehouse_id),
            self._keys.pick_seq,
            self._keys.completions_outbox,
            self._keys.picks_done_due(task.warehouse_id),
            self._keys.order_picks(task.order_id),
        ]
        if task.trace_code:
            keys.append(self._keys.trace(task.trace_code))
        await self._complete_pick(
            self._redis,
            keys,
            [
                task.pick_id,
                completed_at,
                completed_by,
                now_ms,
                self._pick_retention_ms,
                self._trace_retention_s,
            ],
        )
        done = await self.get(task.pick_id)
        assert done is not None  # a task expires only a trace retention after completion
        return done

    async def forget_done(self, now_ms: int, limit: int = 500) -> int:
        """Take the completed picks whose pick retention ended out of their warehouses'
        `done` lists (their tasks stay readable as traces until they expire)."""
        members = cast(set[bytes], await self._redis.smembers(self._keys.pick_warehouses))
        dropped = 0
        for warehouse_id in sorted(m.decode() for m in members):
            while True:
                gone, _left = await self._forget_due(
                    self._redis,
                    [self._keys.picks_done_due(warehouse_id), self._keys.picks_done(warehouse_id)],
                    [now_ms, limit],
                )
                dropped += int(gone)
                if int(gone) < limit:
                    break
        return dropped

    async def forget_order_buyers(self, now_ms: int, limit: int = 500) -> int:
        """Drop the order -> buyer entries whose trace retention ended."""
        dropped = 0
        while True:
            gone, _left = await self._forget_due(
                self._redis,
                [self._keys.order_buyers_due, self._keys.order_buyers],
                [now_ms, limit],
            )
            dropped += int(gone)
            if int(gone) < limit:
                return dropped

    async def completion_pending(self, pick_id: str) -> bool:
        """Whether the task's pick.completed still waits for the broker's acknowledgement."""
        return await self._redis.zscore(self._keys.completions_outbox, pick_id) is not None

    async def completions_pending(self, completed_before_ms: int, limit: int) -> list[PickTask]:
        """Done tasks whose pick.completed has waited since before `completed_before_ms`."""
        members = cast(
            list[bytes],
            await self._redis.zrangebyscore(
                self._keys.completions_outbox, "-inf", completed_before_ms, start=0, num=limit
            ),
        )
        return await self.load([member.decode() for member in members])

    async def completion_published(self, pick_ids: Sequence[str]) -> None:
        if pick_ids:
            await self._redis.zrem(self._keys.completions_outbox, *pick_ids)

    async def page(
        self, warehouse_id: str, status: PickStatus, after: int, limit: int
    ) -> tuple[list[PickTask], int | None]:
        """Tasks of a status in sequence order after a cursor; the next cursor or None."""
        key = (
            self._keys.picks_open(warehouse_id)
            if status == "open"
            else self._keys.picks_done(warehouse_id)
        )
        members = cast(
            list[tuple[bytes, float]],
            await self._redis.zrangebyscore(
                key, f"({after}", "+inf", start=0, num=limit + 1, withscores=True
            ),
        )
        more = len(members) > limit
        members = members[:limit]
        tasks = await self.load([member.decode() for member, _ in members])
        next_cursor = int(members[-1][1]) if more and members else None
        return tasks, next_cursor

    async def open_snapshot(
        self, warehouse_id: str, upto: int | None
    ) -> tuple[int, list[PickTask]]:
        """(sequence now, open tasks): all of them, or those opened at or before `upto`.
        One transaction, so the tasks are exactly those opened up to the sequence."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._keys.pick_seq)
            pipe.zrangebyscore(
                self._keys.picks_open(warehouse_id), "-inf", "+inf" if upto is None else upto
            )
            seq_raw, members = await pipe.execute()
        return int(seq_raw or 0), await self.load([m.decode() for m in members])

    async def changes(self, warehouse_id: str, after: int) -> tuple[int, list[PickTask], list[str]]:
        """(sequence now, tasks opened and still open, pick_ids completed) since `after`."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._keys.pick_seq)
            pipe.zrangebyscore(self._keys.picks_open(warehouse_id), f"({after}", "+inf")
            pipe.zrangebyscore(self._keys.picks_done(warehouse_id), f"({after}", "+inf")
            seq_raw, opened, done = await pipe.execute()
        seq = int(seq_raw or 0)
        tasks = await self.load([m.decode() for m in opened]) if opened else []
        return seq, tasks, [m.decode() for m in done]

    async def load(self, pick_ids: Sequence[str]) -> list[PickTask]:
        """The tasks of these ids that exist, in the same order."""
        if not pick_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for pick_id in pick_ids:
                pipe.hgetall(self._keys.pick(pick_id))
            replies: list[dict[bytes, bytes]] = await pipe.execute()
        tasks = []
        for raw in replies:
            if not raw:
                continue
            done = raw.get(b"status") == b"done"
            tasks.append(
                PickTask.from_document(
                    orjson.loads(raw[b"doc"]),
                    status="done" if done else "open",
                    seq=int(raw[b"done_seq"] if done else raw[b"opened_seq"]),
                    completed_at=_text(raw.get(b"completed_at")),
                    completed_by=_text(raw.get(b"completed_by")),
                )
            )
        return tasks


def _text(raw: bytes | None) -> str | None:
    return raw.decode() if raw is not None else None
