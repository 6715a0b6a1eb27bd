"""The lot journal (DESIGN 4.6) as plain values: entries, their hash chain, its check.

Every lot has an append-only journal: `lot.received` on every upsert, `lot.allocated` on
every payment taking its units, `lot.picked` on every completed pick. Entry `seq` counts
from 1; each entry's `hash` is the lowercase hex SHA-256 of its `prev_hash` (64 hex
characters: the previous entry's hash, 64 zeros for the first) followed by the canonical
JSON of `{seq, type, at, data}`, so changing any stored entry breaks the chain from there.

Canonical JSON is orjson with sorted keys (nested objects too): no whitespace, UTF-8,
non-ASCII written as is (not `\\u` escaped). Anyone can recompute a hash from an entry as
the API shows it, e.g. in Python `json.dumps(x, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()` gives the same bytes.

No buyer data goes into a journal: entries name orders, picks and staff, never buyers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from services.inventory.domain import Lot, LotInput

GENESIS_HASH = "0" * 64

EntryType = Literal["lot.received", "lot.allocated", "lot.picked"]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    type: str
    at: str
    data: Mapping[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """The entry as stored and as the API shows it."""
        return {
            "seq": self.seq,
            "type": self.type,
            "at": self.at,
            "data": dict(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class JournalHead:
    """Where a journal ends: the last entry's seq (0: empty) and hash (GENESIS_HASH: empty)."""

    seq: int = 0
    hash: str = GENESIS_HASH


@dataclass(frozen=True, slots=True)
class ChainCheck:
    ok: bool
    entries: int
    first_bad_seq: int | None

    def as_dict(self) -> dict[str, Any]:
        """As GET .../journal/verify and the journal CLI answer it."""
        return {"ok": self.ok, "entries": self.entries, "first_bad_seq": self.first_bad_seq}


@dataclass(frozen=True, slots=True)
class JournalAppend:
    """What appending answered: `appended`, or `known` (the dedup key was used before:
    `entry` is the entry appended then, nothing new); the journal's head and the lot as
    they are now (what lot.updated announces)."""

    status: Literal["appended", "known"]
    entry: JournalEntry
    head: JournalHead
    lot: Lot


@dataclass(frozen=True, slots=True)
class LotJournalView:
    """A lot's whole journal as stored, and its head."""

    entries: list[JournalEntry]
    head: JournalHead


def canonical_json(value: object) -> bytes:
    """Keys sorted at every level, no whitespace, UTF-8 (non-ASCII not escaped)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def entry_hash(prev_hash: str, seq: int, type_: str, at: str, data: Mapping[str, Any]) -> str:
    body = canonical_json({"seq": seq, "type": type_, "at": at, "data": data})
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def next_entry(
    head: JournalHead, type_: EntryType, at: str, data: Mapping[str, Any]
) -> JournalEntry:
    """The entry that follows `head`."""
    seq = head.seq + 1
    return JournalEntry(
        seq=seq,
        type=type_,
        at=at,
        data=data,
        prev_hash=head.hash,
        hash=entry_hash(head.hash, seq, type_, at, data),
    )


def check_chain(entries: Sequence[JournalEntry]) -> ChainCheck:
    """Recompute the chain: the first entry (by position, counting from 1) whose seq is not
    its position, whose prev_hash is not the previous entry's hash (64 zeros for the first)
    or whose hash is not the hash of its content is bad; everything after it is
    unverifiable."""
    previous = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        recomputed = entry_hash(entry.prev_hash, entry.seq, entry.type, entry.at, entry.data)
        if entry.seq != position or entry.prev_hash != previous or entry.hash != recomputed:
            return ChainCheck(ok=False, entries=len(entries), first_bad_seq=position)
        previous = entry.hash
    return ChainCheck(ok=True, entries=len(entries), first_bad_seq=None)


def head_of(entries: Sequence[JournalEntry]) -> JournalHead:
    return JournalHead(entries[-1].seq, entries[-1].hash) if entries else JournalHead()


# -- what each entry type records (no buyer ids, no payment references)


def received_data(lot: LotInput) -> dict[str, Any]:
    """lot.received: the lot's fields as this upsert set them."""
    return {
        "lot_code": lot.lot_code,
        "warehouse_id": lot.warehouse_id,
        "quantity": lot.quantity,
        "expires_on": lot.expires_on,
        "origin": lot.origin,
        "producer": lot.producer,
        "harvested_on": lot.harvested_on,
        "inspection": lot.inspection,
    }


def allocated_data(
    *, order_id: str, session_id: str, quantity: int, pick_id: str, trace_code: str
) -> dict[str, Any]:
    """lot.allocated: units of this lot a payment took, and the pick task that ships them."""
    return {
        "order_id": order_id,
        "session_id": session_id,
        "quantity": quantity,
        "pick_id": pick_id,
        "trace_code": trace_code,
    }


def picked_data(
    *, pick_id: str, trace_code: str, quantity: int, completed_at: str, completed_by: str
) -> dict[str, Any]:
    """lot.picked: a pick task of this lot done by warehouse staff."""
    return {
        "pick_id": pick_id,
        "trace_code": trace_code,
        "quantity": quantity,
        "completed_at": completed_at,
        "completed_by": completed_by,
    }
