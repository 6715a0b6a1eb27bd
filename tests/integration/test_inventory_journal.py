"""Lot journals on a real Redis: append_journal.lua through JournalStore (idempotent per
dedup key, a moved head retried, concurrent writers kept linear), tampering found by the
chain check, the journal endpoints and the verify CLI."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from deploy.local.stack import ROOT
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.inventory.app import create_app
from services.inventory.domain import LotInput
from services.inventory.journal_store import JournalStore
from services.inventory.lot_journal import GENESIS_HASH, JournalHead, check_chain
from services.inventory.stock_store import StockStore
from tests.conftest import auth

pytestmark = pytest.mark.integration

ADMIN = auth("admin", "ops-1")
AT = "2030-05-01T12:00:00.000Z"


class Stores:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.stock = StockStore(redis, settings)
        self.journals = JournalStore(redis, settings.redis_prefix)

    async def lot(self, sku: str, lot_code: str, quantity: int = 10) -> None:
        result = await self.stock.upsert_lot(sku, LotInput(lot_code, "wh-1", quantity, None, None))
        assert result.status == "created"


@pytest.fixture
async def stores(make_settings: Callable[..., Settings]) -> AsyncIterator[Stores]:
    settings = make_settings("inventory")
    redis = create_redis(settings.redis_url)
    try:
        yield Stores(redis, settings)
    finally:
        await redis.aclose(close_connection_pool=True)


def allocated(order_id: str, quantity: int = 1) -> dict[str, Any]:
    return {"order_id": order_id, "session_id": "s1", "quantity": quantity}


async def test_an_append_is_idempotent_per_dedup_key(stores: Stores) -> None:
    await stores.lot("crab", "L1")
    journals = stores.journals

    first = await journals.append(
        "crab", "L1", "lot.allocated", at=AT, data=allocated("o1"), dedup_key="o1"
    )
    # The same key with another entry (a replay computes its entry afresh): nothing new.
    again = await journals.append(
        "crab", "L1", "lot.allocated", at=AT, data=allocated("o1", 5), dedup_key="o1"
    )
    other = await journals.append(
        "crab", "L1", "lot.allocated", at=AT, data=allocated("o2"), dedup_key="o2"
    )

    assert first is not None and again is not None and other is not None
    assert (first.status, again.status, other.status) == ("appended", "known", "appended")
    assert again.entry == first.entry and again.entry.data == allocated("o1")
    # `known` answers where the journal ends now, and the lot as it is.
    assert again.head == JournalHead(1, first.entry.hash)
    assert other.entry.prev_hash == first.entry.hash and other.head.seq == 2
    assert (other.lot.lot_code, other.lot.quantity) == ("L1", 10)
    view = await journals.read("crab", "L1")
    assert view is not None
    assert [e.data["order_id"] for e in view.entries] == ["o1", "o2"]
    assert view.entries[0].prev_hash == GENESIS_HASH
    assert view.head == other.head
    assert check_chain(view.entries).ok


async def test_an_append_for_a_lot_that_does_not_exist_changes_nothing(stores: Stores) -> None:
    journals = stores.journals

    missing = await journals.append(
        "crab", "nope", "lot.picked", at=AT, data={"pick_id": "p"}, dedup_key="p"
    )

    assert missing is None
    assert await journals.read("crab", "nope") is None
    assert await stores.redis.exists(journals.keys("crab").journal("nope")) == 0


async def test_an_append_whose_head_moved_is_recomputed_on_the_new_head(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer appends between this writer's read of the head and its append."""
    await stores.lot("crab", "L1")
    journals = stores.journals
    real_head = JournalStore.head
    reads: list[JournalHead] = []

    async def stale_head(self: JournalStore, sku: str, lot_code: str) -> JournalHead:
        read = await real_head(self, sku, lot_code)
        reads.append(read)
        if len(reads) == 1:
            # The other writer lands now: what was read is stale before it is used.
            await JournalStore(stores.redis, stores.settings.redis_prefix).append(
                sku, lot_code, "lot.allocated", at=AT, data=allocated("other"), dedup_key="other"
            )
        return read

    monkeypatch.setattr(JournalStore, "head", stale_head)
    mine = await journals.append(
        "crab", "L1", "lot.allocated", at=AT, data=allocated("mine"), dedup_key="mine"
    )
    monkeypatch.undo()

    assert mine is not None and mine.status == "appended"
    # One read each (mine, then the other writer's inside it), both of the empty journal:
    # mine retried from the head the script's `moved` answer carried, without reading.
    assert reads == [JournalHead(), JournalHead()]
    view = await journals.read("crab", "L1")
    assert view is not None
    assert [(e.seq, e.data["order_id"]) for e in view.entries] == [(1, "other"), (2, "mine")]
    assert mine.entry == view.entries[1] and mine.entry.prev_hash == view.entries[0].hash
    assert check_chain(view.entries).ok


async def test_concurrent_writers_keep_one_linear_chain(stores: Stores) -> None:
    await stores.lot("crab", "L1")
    writers = [JournalStore(stores.redis, stores.settings.redis_prefix) for _ in range(4)]

    results = await asyncio.gather(
        *(
            writers[i % 4].append(
                "crab", "L1", "lot.allocated", at=AT, data=allocated(f"o{i}"), dedup_key=f"o{i}"
            )
            for i in range(40)
        )
    )

    assert all(r is not None and r.status == "appended" for r in results)
    view = await stores.journals.read("crab", "L1")
    assert view is not None
    assert [e.seq for e in view.entries] == list(range(1, 41))
    assert {e.data["order_id"] for e in view.entries} == {f"o{i}" for i in range(40)}
    assert check_chain(view.entries).ok and view.head.hash == view.entries[-1].hash


async def tamper(stores: Stores, sku: str, lot_code: str, seq: int, **changes: Any) -> None:
    """Edit one stored entry in Redis, as someone with access to it might."""
    key = stores.journals.keys(sku).journal(lot_code)
    raw = await stores.redis.lindex(key, seq - 1)
    entry = orjson.loads(raw)
    entry["data"].update(changes)
    await stores.redis.lset(key, seq - 1, orjson.dumps(entry))


async def test_an_entry_changed_in_redis_is_named_by_the_check(stores: Stores) -> None:
    await stores.lot("crab", "L1")
    for i in range(1, 5):
        await stores.journals.append(
            "crab", "L1", "lot.allocated", at=AT, data=allocated(f"o{i}"), dedup_key=f"o{i}"
        )

    await tamper(stores, "crab", "L1", 3, quantity=2)

    view = await stores.journals.read("crab", "L1")
    assert view is not None
    assert check_chain(view.entries).as_dict() == {"ok": False, "entries": 4, "first_bad_seq": 3}


async def run_cli(settings: Settings, env_file: Path, sku: str, lot: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.inventory.journal",
        "verify",
        "--sku",
        sku,
        "--lot",
        lot,
        "--env-file",
        str(env_file),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out or err).decode().strip()


async def test_the_verify_cli_prints_the_check_and_exits_1_when_broken(
    stores: Stores, tmp_path: Path
) -> None:
    settings = stores.settings
    env_file = tmp_path / "stack.env"
    env_file.write_text(
        f"LC_REDIS_URL={settings.redis_url}\nLC_REDIS_PREFIX={settings.redis_prefix}\n"
    )
    await stores.lot("crab", "L1")
    for i in (1, 2):
        await stores.journals.append(
            "crab", "L1", "lot.allocated", at=AT, data=allocated(f"o{i}"), dedup_key=f"o{i}"
        )

    code, out = await run_cli(settings, env_file, "crab", "L1")
    assert (code, orjson.loads(out)) == (0, {"ok": True, "entries": 2, "first_bad_seq": None})

    await tamper(stores, "crab", "L1", 2, quantity=9)
    code, out = await run_cli(settings, env_file, "crab", "L1")
    assert (code, orjson.loads(out)) == (1, {"ok": False, "entries": 2, "first_bad_seq": 2})

    code, out = await run_cli(settings, env_file, "crab", "L9")
    assert code == 2 and "no lot 'L9'" in out


# ------------------------------------------------------------------------------- HTTP


async def test_journal_endpoints_show_the_chain_and_its_check(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings("inventory")
    app = await run_app(create_app, settings)
    base = f"{app.url}/v1/skus/crab/lots/L1"

    async def call(
        method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        async with http.request(method, url, headers=headers, **kw) as r:
            body: dict[str, Any] = await r.json(content_type=None)
            if r.status >= 400:
                assert r.content_type == "application/problem+json"
                assert body["status"] == r.status and body["detail"]
            return r.status, body

    # No such lot: 404 for both, to whoever may look.
    assert (await call("GET", f"{base}/journal", ADMIN))[0] == 404
    assert (await call("GET", f"{base}/journal/verify", auth("host", "h1")))[0] == 404

    traced = {
        "warehouse_id": "wh-a",
        "quantity": 4,
        "expires_on": "2030-12-01",
        "origin": "Taihu 太湖",
        "producer": "Coop Wu",
        "harvested_on": "2030-09-20",
        "inspection": "CIQ-2030-0042 passed",
    }
    # Bad trace fields: 422, nothing stored, nothing journaled.
    for bad in (
        {"harvested_on": "2030-02-30"},
        {"harvested_on": "20 Sept"},
        {"inspection": "x" * 201},
        {"producer": 7},
    ):
        assert (await call("PUT", base, ADMIN, json={**traced, **bad}))[0] == 422
    assert (await call("GET", f"{base}/journal", ADMIN))[0] == 404

    status, lot = await call("PUT", base, ADMIN, json=traced)
    assert (status, lot) == (201, {"sku": "crab", "lot_code": "L1", "allocated": 0, **traced})
    blank = {"warehouse_id": "wh-a", "quantity": 6, "producer": ""}
    status, lot = await call("PUT", base, ADMIN, json=blank)
    assert status == 200
    assert (lot["producer"], lot["harvested_on"], lot["inspection"]) == (None, None, None)
    status, view = await call("GET", f"{app.url}/v1/skus/crab", ADMIN)
    assert status == 200 and view["lots"] == [{k: v for k, v in lot.items() if k != "sku"}]
    await call("PUT", base, ADMIN, json=traced)

    status, journal = await call("GET", f"{base}/journal", auth("host", "h1"))
    assert status == 200
    entries = journal["entries"]
    assert [(e["seq"], e["type"]) for e in entries] == [(i, "lot.received") for i in (1, 2, 3)]
    assert entries[0]["data"] == {"lot_code": "L1", **traced}
    assert entries[1]["data"]["quantity"] == 6 and entries[1]["data"]["producer"] is None
    assert entries[0]["prev_hash"] == "0" * 64
    assert [e["prev_hash"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    assert journal["head"] == entries[-1]["hash"]
    assert set(entries[0]) == {"seq", "type", "at", "data", "prev_hash", "hash"}
    assert entries[0]["at"].endswith("Z")
    assert await call("GET", f"{base}/journal/verify", ADMIN) == (
        200,
        {"ok": True, "entries": 3, "first_bad_seq": None},
    )

    # Roles: a token is needed; buyers, staff and payments may not read journals.
    assert (await call("GET", f"{base}/journal"))[0] == 401
    for role, sub in (("buyer", "b1"), ("payments", "psp"), ("warehouse", "w1")):
        headers = auth(role, sub, "wh-a" if role == "warehouse" else None)  # type: ignore[arg-type]
        assert (await call("GET", f"{base}/journal", headers))[0] == 403
        assert (await call("GET", f"{base}/journal/verify", headers))[0] == 403

    # A lot whose journal is empty (stored before journals existed): head is 64 zeros.
    redis = create_redis(settings.redis_url)
    try:
        stores = Stores(redis, settings)
        await stores.lot("crab", "OLD", 2)
        await tamper(stores, "crab", "L1", 2, quantity=60)
    finally:
        await redis.aclose(close_connection_pool=True)
    assert await call("GET", f"{app.url}/v1/skus/crab/lots/OLD/journal", ADMIN) == (
        200,
        {"entries": [], "head": GENESIS_HASH},
    )
    assert await call("GET", f"{base}/journal/verify", auth("host", "h1")) == (
        200,
        {"ok": False, "entries": 3, "first_bad_seq": 2},
    )
