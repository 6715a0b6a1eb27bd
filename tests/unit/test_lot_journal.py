"""The lot journal's hash chain and the trace codes, as pure functions."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import string
from typing import Any

import pytest

from services.common.settings import Settings
from services.inventory.domain import LotInput, trace_code, trace_key
from services.inventory.lot_journal import (
    GENESIS_HASH,
    JournalEntry,
    JournalHead,
    canonical_json,
    check_chain,
    entry_hash,
    head_of,
    next_entry,
    received_data,
)
from services.inventory.outcome_events import pick_id

KEY = trace_key("unit-test-trace-secret")
SECRET = "unit-test-secret-" + "x" * 24


# ------------------------------------------------------------------------ trace codes


def test_a_trace_code_is_22_base62_characters() -> None:
    codes = [trace_code(KEY, pick_id(f"order-{i}", "L1")) for i in range(200)]

    alphabet = set(string.ascii_letters + string.digits)
    assert all(len(code) == 22 and set(code) <= alphabet for code in codes)
    # Every character position varies (no fixed padding a guesser could rely on, beyond
    # the rare leading zero digit).
    assert all(len({code[i] for code in codes}) > 10 for i in range(1, 22))


def test_a_trace_code_is_stable_and_one_per_pick() -> None:
    first = pick_id("order-1", "L1")

    assert trace_code(KEY, first) == trace_code(trace_key("unit-test-trace-secret"), first)
    codes = {trace_code(KEY, pick_id(f"order-{i}", lot)) for i in range(500) for lot in "AB"}
    assert len(codes) == 1000


def test_a_trace_code_depends_on_the_secret_and_not_on_the_raw_secret() -> None:
    task = pick_id("order-1", "L1")

    assert trace_code(trace_key("another-secret"), task) != trace_code(KEY, task)
    # Domain separation: the key is derived, never the secret itself (which, as the JWT
    # secret, also keys the token signatures).
    assert trace_key("s3cret") != b"s3cret"
    assert trace_code(trace_key("s3cret"), task) != trace_code(b"s3cret", task)


def test_settings_key_trace_codes_by_their_own_secret_else_the_jwt_secret() -> None:
    fallback = Settings.from_env("inventory", {"LC_JWT_SECRET": SECRET})
    own = Settings.from_env(
        "inventory", {"LC_JWT_SECRET": SECRET, "LC_TRACE_SECRET": "trace-secret-1"}
    )

    assert fallback.trace_secret == "" and fallback.trace_key_secret == SECRET
    assert own.trace_key_secret == "trace-secret-1"


# ---------------------------------------------------------------------------- the chain


def chain(*payloads: dict[str, Any]) -> list[JournalEntry]:
    entries: list[JournalEntry] = []
    for i, data in enumerate(payloads):
        at = f"2030-05-01T12:00:0{i}.000Z"
        entries.append(next_entry(head_of(entries), "lot.allocated", at, data))
    return entries


def test_the_first_entry_chains_onto_64_zeros_and_seq_counts_from_1() -> None:
    entries = chain({"quantity": 1}, {"quantity": 2})

    assert [e.seq for e in entries] == [1, 2]
    assert entries[0].prev_hash == GENESIS_HASH == "0" * 64
    assert entries[1].prev_hash == entries[0].hash
    assert head_of(entries) == JournalHead(2, entries[1].hash)
    assert head_of([]) == JournalHead(0, GENESIS_HASH)


def test_the_hash_is_sha256_of_prev_hash_and_canonical_json() -> None:
    """Recomputed the way a third party would, with the standard library only."""
    data = {"origin": "太湖 Taihu", "quantity": 3, "nested": {"b": None, "a": [1, "é"]}}
    entry = next_entry(JournalHead(), "lot.received", "2030-05-01T12:00:00.000Z", data)

    body = {"seq": 1, "type": "lot.received", "at": "2030-05-01T12:00:00.000Z", "data": data}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(body) == canonical.encode("utf-8")
    assert b" " not in canonical_json({"b": 1, "a": {"d": 2, "c": 3}})
    assert "太湖".encode() in canonical_json(body)
    expected = hashlib.sha256(("0" * 64 + canonical).encode("utf-8")).hexdigest()
    assert entry.hash == expected == entry_hash("0" * 64, 1, "lot.received", entry.at, data)
    assert entry.hash == entry.hash.lower() and len(entry.hash) == 64


def test_an_intact_chain_verifies() -> None:
    entries = chain({"quantity": 1}, {"quantity": 2}, {"quantity": 3})

    assert check_chain(entries) == check_chain(list(entries))
    assert check_chain(entries).as_dict() == {"ok": True, "entries": 3, "first_bad_seq": None}
    assert check_chain([]).as_dict() == {"ok": True, "entries": 0, "first_bad_seq": None}


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda e: dataclasses.replace(e, data={"quantity": 99}), id="data"),
        pytest.param(lambda e: dataclasses.replace(e, at="2031-01-01T00:00:00Z"), id="at"),
        pytest.param(lambda e: dataclasses.replace(e, type="lot.picked"), id="type"),
        pytest.param(lambda e: dataclasses.replace(e, hash="f" * 64), id="hash"),
        pytest.param(lambda e: dataclasses.replace(e, prev_hash="e" * 64), id="prev_hash"),
        pytest.param(lambda e: dataclasses.replace(e, seq=7), id="seq"),
    ],
)
def test_changing_any_part_of_an_entry_names_its_seq(tamper: Any) -> None:
    entries = chain({"quantity": 1}, {"quantity": 2}, {"quantity": 3}, {"quantity": 4})
    entries[2] = tamper(entries[2])

    assert check_chain(entries).as_dict() == {"ok": False, "entries": 4, "first_bad_seq": 3}


def test_a_rehashed_entry_still_breaks_the_link_to_the_next() -> None:
    """Whoever edits an entry and recomputes its hash breaks the next entry's prev_hash."""
    entries = chain({"quantity": 1}, {"quantity": 2}, {"quantity": 3})
    forged = entries[1]
    forged_data = {"quantity": 20}
    entries[1] = dataclasses.replace(
        forged,
        data=forged_data,
        hash=entry_hash(forged.prev_hash, forged.seq, forged.type, forged.at, forged_data),
    )

    assert check_chain(entries).first_bad_seq == 3


def test_a_removed_or_reordered_entry_is_found() -> None:
    entries = chain({"quantity": 1}, {"quantity": 2}, {"quantity": 3})

    assert check_chain([entries[0], entries[2]]).first_bad_seq == 2
    assert check_chain([entries[1], entries[0], entries[2]]).first_bad_seq == 1


def test_received_data_is_the_lot_as_upserted() -> None:
    lot = LotInput("L1", "wh-1", 10, "2030-06-01", "Taihu", "Coop A", "2030-05-01", "cert-9")

    assert received_data(lot) == {
        "lot_code": "L1",
        "warehouse_id": "wh-1",
        "quantity": 10,
        "expires_on": "2030-06-01",
        "origin": "Taihu",
        "producer": "Coop A",
        "harvested_on": "2030-05-01",
        "inspection": "cert-9",
    }


def test_trace_keys_are_hmac_of_a_label() -> None:
    """The derivation as documented (docs/operations.md), so another tool can rebuild it."""
    expected = hmac.new(b"s", b"livecommerce/trace-code/v1", hashlib.sha256).digest()

    assert trace_key("s") == expected
