"""Lot journals in Redis (DESIGN 4.6; the chain itself: lot_journal).

Keys (see stock_store's docstring) carry the sku's hash tag, so a journal, its head, its
dedup keys and the lot live in one Redis Cluster slot with the rest of the sku.

Redis Lua has no SHA-256, so the entry and its hash are computed here from the head read
before; `append_journal.lua` appends it only if the journal still ends at that head (else
`moved`: recompute from the head it answers and try again) and only once per dedup key
(else `known`: the entry appended under that key). The dedup key is what makes a replay
harmless: a payment appends under its order_id, a completed pick under its pick_id, an
upsert under a key of its own request (so a retried call, not a second PUT, is a no-op).
"""

from __future__ import annotations

from typing import Any, Literal, cast

import orjson

from services.common.clock import epoch_ms
from services.common.redis_scripts import LuaScript, RedisClient
from services.inventory.lot_journal import (
    EntryType,
    JournalAppend,
    JournalEntry,
    JournalHead,
    LotJournalView,
    canonical_json,
    head_of,
    next_entry,
)
from services.inventory.stock_store import LUA, SkuKeys, lot_from_json

# Another writer appending between our read and our append costs one more round; this
# many in a row means something is wrong (a writer looping), not contention.
MAX_ATTEMPTS = 50


class JournalConflict(RuntimeError):
    """The head kept moving under every attempt."""


# A dedup key outlives every event that may append under it again (Settings.replay_window_ms).
DEFAULT_KEEP_MS = 8 * 24 * 3600 * 1000


class JournalStore:
    def __init__(self, redis: RedisClient, prefix: str, keep_ms: int = DEFAULT_KEEP_MS) -> None:
        self._redis = redis
        self._prefix = prefix
        self._keep_ms = keep_ms
        self._append = LuaScript(LUA, "append_journal.lua")

    def keys(self, sku: str) -> SkuKeys:
        return SkuKeys(self._prefix, sku)

    async def head(self, sku: str, lot_code: str) -> JournalHead:
        k = self.keys(sku)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.llen(k.journal(lot_code))
            pipe.hget(k.journal_heads, lot_code)
            length, head = await pipe.execute()
        return JournalHead(int(length), _text(head)) if length else JournalHead()

    async def append(
        self,
        sku: str,
        lot_code: str,
        type_: EntryType,
        *,
        at: str,
        data: dict[str, Any],
        dedup_key: str,
        now_ms: int | None = None,
    ) -> JournalAppend | None:
        """Append an entry once per `dedup_key`; None when the lot does not exist. The
        key is kept for the replay window from `now_ms` (default: now)."""
        keep_until = (epoch_ms() if now_ms is None else now_ms) + self._keep_ms
        k = self.keys(sku)
        keys: list[str | bytes] = [
            k.lots,
            k.journal(lot_code),
            k.journal_heads,
            k.journal_dedup(lot_code),
            k.journal_dedup_due(lot_code),
        ]
        head = await self.head(sku, lot_code)
        for _ in range(MAX_ATTEMPTS):
            entry = next_entry(head, type_, at, data)
            status, stored, seq, head_hash, lot = await self._append(
                self._redis,
                keys,
                [
                    lot_code,
                    entry.prev_hash,
                    entry.seq,
                    dedup_key,
                    canonical_json(entry.as_dict()),
                    entry.hash,
                    keep_until,
                ],
            )
            state = _text(status)
            now = JournalHead(int(seq), _text(head_hash)) if int(seq) else JournalHead()
            if state == "no_lot":
                return None
            if state == "moved":
                head = now
                continue
            return JournalAppend(
                status=cast(Literal["appended", "known"], state),
                entry=entry_from_json(entry.seq, stored) if stored else entry,
                head=now,
                lot=lot_from_json(lot_code, lot),
            )
        raise JournalConflict(f"journal of {sku}/{lot_code}: the head moved {MAX_ATTEMPTS} times")

    async def read(self, sku: str, lot_code: str) -> LotJournalView | None:
        """The lot's journal and head, read in one transaction; None when no such lot."""
        k = self.keys(sku)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hexists(k.lots, lot_code)
            pipe.lrange(k.journal(lot_code), 0, -1)
            pipe.hget(k.journal_heads, lot_code)
            exists, raw_entries, head = await pipe.execute()
        if not exists:
            return None
        entries = [entry_from_json(i, raw) for i, raw in enumerate(raw_entries, start=1)]
        last = JournalHead(len(entries), _text(head)) if head is not None else head_of(entries)
        return LotJournalView(entries, last)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_from_json(position: int, raw: bytes | str) -> JournalEntry:
    """A stored entry. One that is not a well-formed entry any more (edited by hand) is
    kept in view as `unreadable` with an empty hash, so the chain check names it."""
    try:
        doc = orjson.loads(raw)
        return JournalEntry(
            seq=int(doc["seq"]),
            type=str(doc["type"]),
            at=str(doc["at"]),
            data=dict(doc["data"]),
            prev_hash=str(doc["prev_hash"]),
            hash=str(doc["hash"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return JournalEntry(position, "unreadable", "", {"raw": text}, "", "")
