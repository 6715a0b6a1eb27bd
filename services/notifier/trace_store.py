"""Reading traces back from the notifier's read model in Redis (see `trace.py`).

Keys (redis_keys.NotifierKeys, all in the `{nt}` slot): `trace:<code>` -> pick_id and
`order-picks:<order_id>` (written with the task by apply_picks.lua), the pick hashes,
`lots` (the newest lot.updated per lot, by journal_seq), `session:<id>` (title, pavilion)
and `order-buyers` (order_id -> buyer_id, from reservation.committed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from services.common.redis_scripts import RedisClient
from services.notifier.pick_queue import PickTask
from services.notifier.pick_store import PickStore
from services.notifier.redis_keys import NotifierKeys
from services.notifier.trace import LotRecord, SessionLabel, lot_field, trace_document


class TraceStore:
    def __init__(self, redis: RedisClient, keys: NotifierKeys, picks: PickStore) -> None:
        self._redis = redis
        self._keys = keys
        self._picks = picks

    async def by_code(self, trace_code: str) -> dict[str, Any] | None:
        """The trace behind a box label, or None for a code no pick task carries."""
        raw = cast(bytes | None, await self._redis.get(self._keys.trace(trace_code)))
        if raw is None:
            return None
        task = await self._picks.get(raw.decode())
        if task is None or task.trace_code != trace_code:
            return None
        (trace,) = await self._documents([task])
        return trace

    async def order_buyer(self, order_id: str) -> str | None:
        """The buyer of a paid order (None: not paid, or unknown)."""
        raw = cast(bytes | None, await self._redis.hget(self._keys.order_buyers, order_id))
        return raw.decode() if raw is not None else None

    async def for_order(self, order_id: str) -> list[dict[str, Any]]:
        """One trace per pick task of the order, in the order the tasks were opened."""
        members = cast(set[bytes], await self._redis.smembers(self._keys.order_picks(order_id)))
        tasks = await self._picks.load(sorted(member.decode() for member in members))
        tasks.sort(key=lambda task: (task.created_at, task.pick_id))
        return await self._documents(tasks)

    async def _documents(self, tasks: Sequence[PickTask]) -> list[dict[str, Any]]:
        if not tasks:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._keys.lots, [lot_field(t.sku, t.lot_code) for t in tasks])
            for task in tasks:
                pipe.hmget(self._keys.session(task.session_id), ["title", "pavilion"])
            lots, *sessions = await pipe.execute()
        documents = []
        for task, raw_lot, (title, pavilion) in zip(tasks, lots, sessions, strict=True):
            lot = LotRecord.from_json(raw_lot) if raw_lot is not None else None
            session = (
                SessionLabel(title.decode(), (pavilion or b"").decode() or None)
                if title is not None
                else None
            )
            documents.append(trace_document(task, lot, session))
        return documents
