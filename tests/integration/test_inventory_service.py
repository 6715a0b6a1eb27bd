"""The inventory app in-process on the real broker and Redis: order events in, outcomes,
stock snapshots and pick tasks out, the truth over HTTP, and a full replay that changes
nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from deploy.local.stack import free_port
from services.common.clock import now_rfc3339
from services.common.events import Envelope, decode
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from services.inventory.app import create_app
from services.inventory.outcome_events import pick_id
from tests.conftest import auth
from tests.events import data_of, event
from tests.waiting import eventually

pytestmark = pytest.mark.integration

ADMIN = auth("admin", "ops-1")
OUTCOMES = (
    "reservation.confirmed",
    "reservation.rejected",
    "reservation.committed",
    "reservation.released",
    "reservation.expired",
)


class TopicReader:
    """Every event of some topics from the beginning, by manual assignment (no group)."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )
        self._partitions = [
            TopicPartition(t, p) for t in topics for p in range(settings.topic_partitions)
        ]
        self.events: list[Envelope] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                self.events += [decode(r.value) for r in records]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    def of(self, *types: str) -> list[Envelope]:
        return [e for e in self.events if e.type in types]


@pytest.fixture
async def publisher(make_settings: Callable[..., Settings]) -> AsyncIterator[EventPublisher]:
    producer = create_producer(make_settings("live_orders"))
    await producer.start()
    try:
        yield EventPublisher(producer, PlatformMetrics.create())
    finally:
        await producer.stop()


@pytest.fixture
async def reader_factory() -> AsyncIterator[Callable[..., Any]]:
    readers: list[TopicReader] = []

    async def start(settings: Settings, topics: list[str]) -> TopicReader:
        reader = TopicReader(settings, topics)
        await reader.start()
        readers.append(reader)
        return reader

    yield start
    for reader in readers:
        await reader.stop()


def placed(order_id: str, sku: str, buyer: str, quantity: int, limit: int = 2) -> Envelope:
    return event(
        "order.placed",
        {
            "order_id": order_id,
            "session_id": "live-1",
            "sku": sku,
            "buyer_id": buyer,
            "quantity": quantity,
            "unit_price_cents": 1_000,
            "total_cents": quantity * 1_000,
            "per_user_limit": limit,
            "placed_at": now_rfc3339(),
        },
        source="test",
    )


def paid(order_id: str, sku: str, buyer: str, quantity: int) -> Envelope:
    data = {
        "order_id": order_id,
        "session_id": "live-1",
        "sku": sku,
        "buyer_id": buyer,
        "quantity": quantity,
        "payment_ref": f"pay-{order_id}",
        "amount_cents": quantity * 1_000,
    }
    return event("order.paid", data, source="test")


def cancelled(order_id: str, sku: str, buyer: str, quantity: int) -> Envelope:
    data = {
        "order_id": order_id,
        "session_id": "live-1",
        "sku": sku,
        "buyer_id": buyer,
        "quantity": quantity,
    }
    return event("order.cancelled", data, source="test")


async def put_lot(
    http: aiohttp.ClientSession, url: str, sku: str, lot: str, body: dict[str, Any]
) -> int:
    async with http.put(f"{url}/v1/skus/{sku}/lots/{lot}", json=body, headers=ADMIN) as r:
        if r.status >= 400:
            assert r.content_type == "application/problem+json"
        await r.read()
        return r.status


async def sku_state(http: aiohttp.ClientSession, url: str, sku: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/skus/{sku}", headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_orders_flow_to_outcomes_picks_and_stock_and_a_full_replay_changes_nothing(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    publisher: EventPublisher,
    reader_factory: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings("inventory")
    topics = Topics.with_prefix(settings.topic_prefix)
    app = await run_app(create_app, settings)
    reader: TopicReader = await reader_factory(settings, [topics.inventory, topics.picks])

    for lot, warehouse, quantity, expires in (
        ("L1", "wh-a", 3, "2026-12-01"),
        ("L2", "wh-b", 5, "2026-12-03"),
        ("L3", "wh-a", 4, None),
    ):
        body = {"warehouse_id": warehouse, "quantity": quantity, "expires_on": expires}
        assert await put_lot(http, app.url, "crab", lot, body) == 201
    assert await put_lot(http, app.url, "tea", "M1", {"warehouse_id": "wh-a", "quantity": 5}) == 201

    # crab: 12 units. o1..o6 take 2 each; b1 tries a second order (limit 2); o8 finds none.
    orders = [(f"o{i}", f"b{i}", 2) for i in range(1, 7)] + [("o7", "b1", 2), ("o8", "b7", 1)]
    await publisher.publish_many(
        (topics.orders, "crab", placed(oid, "crab", buyer, q)) for oid, buyer, q in orders
    )
    await publisher.publish(topics.orders, "tea", placed("t1", "tea", "b1", 1))

    async def decided() -> dict[str, str]:
        seen = {
            data_of(e)["order_id"]: data_of(e).get("reason", "confirmed")
            for e in reader.of("reservation.confirmed", "reservation.rejected")
        }
        assert len(seen) == 9, seen
        return seen

    decisions = await eventually(decided, what="9 reservation decisions")
    assert decisions == {
        **{f"o{i}": "confirmed" for i in range(1, 7)},
        "o7": "limit_exceeded",
        "o8": "sold_out",
        "t1": "confirmed",
    }
    confirmed = next(
        e for e in reader.of("reservation.confirmed") if data_of(e)["order_id"] == "o1"
    )
    assert (
        data_of(confirmed)["session_id"] == "live-1" and data_of(confirmed)["total_cents"] == 2_000
    )
    assert data_of(confirmed)["expires_at"].endswith("Z")

    # Pay o1..o4, cancel o5, cancel t1 twice (a retried cancel); o6 stays held.
    await publisher.publish_many(
        [(topics.orders, "crab", paid(f"o{i}", "crab", f"b{i}", 2)) for i in range(1, 5)]
        + [(topics.orders, "crab", cancelled("o5", "crab", "b5", 2))]
        + [(topics.orders, "tea", cancelled("t1", "tea", "b1", 1)) for _ in range(2)]
    )

    async def settled() -> dict[str, Any]:
        assert len(reader.of("reservation.committed")) == 4
        assert {data_of(e)["order_id"] for e in reader.of("reservation.released")} == {"o5", "t1"}
        state = await sku_state(http, app.url, "crab")
        assert (state["available"], state["reserved"], state["sold"]) == (2, 2, 8), state
        return state

    crab = await eventually(settled, what="payments and cancels applied")
    assert crab["received"] == 12
    assert [(lot["lot_code"], lot["allocated"]) for lot in crab["lots"]] == [
        ("L1", 3),
        ("L2", 5),
        ("L3", 0),
    ]
    tea = await sku_state(http, app.url, "tea")
    assert (tea["available"], tea["reserved"], tea["sold"]) == (5, 0, 0)

    # FEFO: o1 L1:2 | o2 L1:1 + L2:1 | o3 L2:2 | o4 L2:2 -> one pick per (order, lot).
    async def picks_out() -> list[Envelope]:
        picks = reader.of("pick.requested")
        assert len(picks) == 5
        return picks

    picks = await eventually(picks_out, what="5 pick tasks")
    assert sorted(
        (data_of(p)["order_id"], data_of(p)["lot_code"], data_of(p)["quantity"]) for p in picks
    ) == [
        ("o1", "L1", 2),
        ("o2", "L1", 1),
        ("o2", "L2", 1),
        ("o3", "L2", 2),
        ("o4", "L2", 2),
    ]
    assert {data_of(p)["pick_id"] for p in picks} == {
        pick_id(data_of(p)["order_id"], data_of(p)["lot_code"]) for p in picks
    }
    assert {data_of(p)["warehouse_id"] for p in picks if data_of(p)["lot_code"] == "L2"} == {"wh-b"}
    committed = next(
        e for e in reader.of("reservation.committed") if data_of(e)["order_id"] == "o2"
    )
    assert data_of(committed)["allocations"] == [
        {"lot_code": "L1", "warehouse_id": "wh-a", "quantity": 1},
        {"lot_code": "L2", "warehouse_id": "wh-b", "quantity": 1},
    ]
    assert data_of(committed)["payment_ref"] == "pay-o2"
    counters = {k: crab[k] for k in ("sku", "received", "available", "reserved", "sold")}

    async def announced() -> bool:
        snapshots = [data_of(e) for e in reader.of("stock.changed") if data_of(e)["sku"] == "crab"]
        last = dict(snapshots[-1])
        # The version (counted by every counter change since the first lot) orders them.
        return last.pop("version") > 0 and last == counters

    await eventually(announced, what="stock.changed with the final counters")

    # Lots cannot lose units already sold (L1: 3 allocated) or held (L3's 4 > 2 available).
    for lot, quantity in (("L1", 2), ("L3", 0)):
        body = {"warehouse_id": "wh-a", "quantity": quantity}
        assert await put_lot(http, app.url, "crab", lot, body) == 409
    assert await sku_state(http, app.url, "crab") == crab

    # Replay everything: stop, rewind the group to offset 0, start again.
    before_ids = Counter(e.event_id for e in reader.of(*OUTCOMES, "pick.requested"))
    assert len(before_ids) == 9 + 4 + 2 + 5 and max(before_ids.values()) == 2  # t1 released twice
    outcome_count = len(reader.of(*OUTCOMES, "pick.requested"))
    await app.stop()
    await rewind_group(settings, f"{settings.topic_prefix}inventory", topics.orders)
    again = await run_app(create_app, settings.replace(http_port=free_port()))

    async def replayed() -> list[Envelope]:
        events = reader.of(*OUTCOMES, "pick.requested")
        assert len(events) == 2 * outcome_count, (len(events), outcome_count)
        return events

    everything = await eventually(replayed, what="every outcome published again")
    assert set(Counter(e.event_id for e in everything)) == set(before_ids)
    assert await sku_state(http, again.url, "crab") == crab
    assert await sku_state(http, again.url, "tea") == tea
    assert len({data_of(p)["pick_id"] for p in reader.of("pick.requested")}) == 5
    async with http.get(f"{again.url}/metrics") as r:
        metrics = await r.text()
    # The restarted process decided nothing itself: it only answered stored decisions.
    assert 'lc_inventory_decisions_total{outcome="confirmed",replay="true"} 7.0' in metrics
    assert 'replay="false"' not in metrics


async def rewind_group(settings: Settings, group: str, topic: str) -> None:
    """Commit offset 0 on every partition for `group` (whose members have all left)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


async def test_unpaid_holds_expire_through_the_outbox_and_give_units_back(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    publisher: EventPublisher,
    reader_factory: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings("inventory", reservation_ttl_s=1.0, sweep_interval_s=0.1)
    topics = Topics.with_prefix(settings.topic_prefix)
    app = await run_app(create_app, settings)
    reader: TopicReader = await reader_factory(settings, [topics.inventory])
    assert (
        await put_lot(http, app.url, "rice", "R1", {"warehouse_id": "wh-a", "quantity": 3}) == 201
    )
    await publisher.publish_many(
        (topics.orders, "rice", placed(f"r{i}", "rice", f"b{i}", 1)) for i in range(3)
    )

    async def expired() -> set[str]:
        gone = {data_of(e)["order_id"] for e in reader.of("reservation.expired")}
        assert gone == {"r0", "r1", "r2"}
        return gone

    await eventually(expired, timeout=15, what="three holds expired")
    assert len(reader.of("reservation.confirmed")) == 3
    state = await sku_state(http, app.url, "rice")
    assert (state["available"], state["reserved"], state["sold"]) == (3, 0, 0)

    async def announced() -> bool:
        last = [data_of(e) for e in reader.of("stock.changed")][-1]
        return bool(last["available"] == 3)

    await eventually(announced, what="stock.changed after the expiry")
    # A payment arriving after the sweep answers expired again (same id), and sells nothing.
    await publisher.publish(topics.orders, "rice", paid("r0", "rice", "b0", 1))

    async def answered() -> bool:
        return len(reader.of("reservation.expired")) == 4

    await eventually(answered, what="late payment answered")
    assert len({e.event_id for e in reader.of("reservation.expired")}) == 3
    assert not reader.of("reservation.committed")
    async with http.get(f"{app.url}/metrics") as r:
        text = await r.text()
    assert "lc_inventory_sweeper_releases_total 3.0" in text


async def test_http_auth_validation_and_conflicts(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings("inventory", max_body_bytes=1024)
    app = await run_app(create_app, settings)
    async with http.get(f"{app.url}/readyz") as r:
        assert r.status == 200
        assert (await r.json())["checks"]["consumer"] is True
    lot_url = f"{app.url}/v1/skus/crab/lots/L1"
    good = {"warehouse_id": "wh-a", "quantity": 4, "expires_on": "2026-12-01", "origin": "Taihu"}

    async def status_of(
        method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        async with http.request(method, url, headers=headers, **kw) as r:
            body: dict[str, Any] = await r.json(content_type=None)
            if r.status >= 400:
                assert r.content_type == "application/problem+json"
                assert body["status"] == r.status and body["detail"]
            return r.status, body

    assert (await status_of("PUT", lot_url, json=good))[0] == 401
    bad_token = {"Authorization": "Bearer not-a-jwt"}
    assert (await status_of("PUT", lot_url, bad_token, json=good))[0] == 401
    assert (await status_of("PUT", lot_url, auth("host", "h1"), json=good))[0] == 403
    assert (await status_of("GET", f"{app.url}/v1/skus/crab", auth("buyer", "b1")))[0] == 403
    assert (await status_of("GET", f"{app.url}/v1/skus/crab", ADMIN))[0] == 404

    extra = {**good, "colour": "red"}
    assert (await status_of("PUT", lot_url, ADMIN, json=extra))[0] == 422
    assert (await status_of("PUT", lot_url, ADMIN, json={**good, "quantity": "4"}))[0] == 422
    assert (await status_of("PUT", lot_url, ADMIN, json={"quantity": 4}))[0] == 422
    assert (await status_of("PUT", lot_url, ADMIN, json={**good, "expires_on": "2026-13-45"}))[
        0
    ] == 422
    malformed = {**ADMIN, "Content-Type": "application/json"}
    assert (await status_of("PUT", lot_url, malformed, data=b'{"warehouse_id": '))[0] == 400
    huge = {**good, "origin": "x" * 2000}
    assert (await status_of("PUT", lot_url, ADMIN, json=huge))[0] == 413
    assert (await status_of("GET", f"{app.url}/v1/skus/crab", ADMIN))[0] == 404

    status, lot = await status_of("PUT", lot_url, ADMIN, json=good)
    assert status == 201
    untraced = {"producer": None, "harvested_on": None, "inspection": None}
    assert lot == {"sku": "crab", "lot_code": "L1", "allocated": 0, **good, **untraced}
    status, lot = await status_of("PUT", lot_url, ADMIN, json={**good, "quantity": 6})
    assert (status, lot["quantity"]) == (200, 6)
    status, view = await status_of("GET", f"{app.url}/v1/skus/crab", auth("host", "h1"))
    assert status == 200
    assert (view["received"], view["available"], view["reserved"], view["sold"]) == (6, 6, 0, 0)
    assert view["lots"] == [{k: v for k, v in lot.items() if k != "sku"}]


async def test_a_payment_over_two_lots_is_journaled_in_both_and_a_pick_in_its_lot(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    publisher: EventPublisher,
    reader_factory: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings("inventory")
    topics = Topics.with_prefix(settings.topic_prefix)
    app = await run_app(create_app, settings)
    reader: TopicReader = await reader_factory(settings, [topics.inventory, topics.picks])
    for lot, warehouse, expires in (("E1", "wh-a", "2030-06-01"), ("E2", "wh-b", "2030-06-09")):
        body = {"warehouse_id": warehouse, "quantity": 2, "expires_on": expires}
        assert await put_lot(http, app.url, "peach", lot, {**body, "producer": "Orchard 7"}) == 201
    await publisher.publish(topics.orders, "peach", placed("p1", "peach", "b1", 3, limit=3))
    await publisher.publish(topics.orders, "peach", paid("p1", "peach", "b1", 3))

    async def picks_out() -> list[dict[str, Any]]:
        picks = [data_of(e) for e in reader.of("pick.requested")]
        assert len(picks) == 2
        return picks

    picks = {p["lot_code"]: p for p in await eventually(picks_out, what="two pick tasks")}
    codes = {lot: pick["trace_code"] for lot, pick in picks.items()}
    assert codes["E1"] != codes["E2"]
    assert all(len(code) >= 16 and code.isascii() and code.isalnum() for code in codes.values())

    async def journal(lot: str) -> dict[str, Any]:
        async with http.get(f"{app.url}/v1/skus/peach/lots/{lot}/journal", headers=ADMIN) as r:
            assert r.status == 200
            body: dict[str, Any] = await r.json()
            return body

    for lot, quantity in (("E1", 2), ("E2", 1)):
        received, allocation = (await journal(lot))["entries"]
        assert received["type"] == "lot.received"
        assert received["data"]["producer"] == "Orchard 7"
        assert (allocation["seq"], allocation["type"]) == (2, "lot.allocated")
        assert allocation["data"] == {
            "order_id": "p1",
            "session_id": "live-1",
            "quantity": quantity,
            "pick_id": picks[lot]["pick_id"],
            "trace_code": codes[lot],
        }

    # The notifier reports E2's pick done (twice: Kafka may redeliver): one lot.picked.
    done = event(
        "pick.completed",
        {
            "pick_id": picks["E2"]["pick_id"],
            "order_id": "p1",
            "sku": "peach",
            "warehouse_id": "wh-b",
            "lot_code": "E2",
            "quantity": 1,
            "trace_code": codes["E2"],
            "completed_at": "2030-05-01T12:30:00.000Z",
            "completed_by": "staff-7",
        },
        dedup_key=picks["E2"]["pick_id"],
    )
    await publisher.publish_many([(topics.picks, "wh-b", done)] * 2)

    async def picked() -> dict[str, Any]:
        updates = [
            data_of(e)
            for e in reader.of("lot.updated")
            if data_of(e)["lot_code"] == "E2" and data_of(e)["journal_seq"] == 3
        ]
        assert len(updates) == 2  # announced after the append and after the no-op again
        return updates[-1]

    update = await eventually(picked, what="lot.updated after the pick")
    entries = (await journal("E2"))["entries"]
    assert [e["type"] for e in entries] == ["lot.received", "lot.allocated", "lot.picked"]
    assert entries[2]["data"]["trace_code"] == codes["E2"]
    assert update["journal_head"] == entries[2]["hash"]
    assert (update["quantity"], update["allocated"], update["producer"]) == (2, 1, "Orchard 7")
    # Every append was announced: a receipt and an allocation per lot, then the pick.
    seqs = sorted(
        (data_of(e)["lot_code"], data_of(e)["journal_seq"]) for e in reader.of("lot.updated")
    )
    assert seqs == [("E1", 1), ("E1", 2), ("E2", 1), ("E2", 2), ("E2", 3), ("E2", 3)]
    async with http.get(f"{app.url}/v1/skus/peach/lots/E2/journal/verify", headers=ADMIN) as r:
        assert await r.json() == {"ok": True, "entries": 3, "first_bad_seq": None}


async def test_orders_and_picks_are_read_by_two_members_of_one_group(
    make_settings: Callable[..., Settings], run_app: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """The orders member, on the buyer's path, fetches only the orders topic's partitions
    (a fetch costs per partition it names); the picks member the picks topic's. Both are
    in the group `<prefix>inventory`, so the offsets committed before the split still hold,
    and both are part of /readyz."""
    settings = make_settings("inventory")
    topics = Topics.with_prefix(settings.topic_prefix)
    app = await run_app(create_app, settings)
    group = f"{settings.topic_prefix}inventory"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:

        async def assigned() -> list[set[str]] | None:
            (response,) = await admin.describe_consumer_groups([group])
            (described,) = response.groups
            state, members = described[2], described[5]
            if state != "Stable" or len(members) != 2:
                return None
            # member_assignment is the last field of a member in every version
            return [
                {
                    f"{topic}:{p}"
                    for topic, partitions in ConsumerProtocolMemberAssignment.decode(
                        member[-1]
                    ).assignment
                    for p in partitions
                }
                for member in members
            ]

        by_member = await eventually(assigned, what="both inventory members assigned")
    finally:
        await admin.close()
    every = settings.topic_partitions
    expected = [
        {f"{topics.orders}:{p}" for p in range(every)},
        {f"{topics.picks}:{p}" for p in range(every)},
    ]
    assert sorted(by_member, key=sorted) == sorted(expected, key=sorted)
    async with http.get(f"{app.url}/readyz") as r:
        checks = (await r.json())["checks"]
    assert checks["consumer"] is True and checks["picks_consumer"] is True
