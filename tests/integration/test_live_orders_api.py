"""live_orders over HTTP against a real Kafka broker and Redis.

Inventory is being written elsewhere, so `Decider` stands in for it: a real aiokafka
consumer on the orders topic that answers on the real inventory topic with a plain stock
counter per SKU. One live_orders app and one decider serve the whole module (starting
them per test would cost most of the time budget); tests keep apart by using their own
session, SKU and buyer names. Tests that need their own settings start their own app.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.clock import to_rfc3339, utc_now
from services.common.events import Envelope, decode
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics
from services.common.metrics import PlatformMetrics
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.common.web_app import METRICS
from services.live_orders.app import create_app
from services.live_orders.redis_keys import RedisKeys
from tests.conftest import Backends, auth, new_prefix, settings_for
from tests.events import data_of, event
from tests.waiting import eventually

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ the stand-in decider


@dataclass
class Decider:
    """Decides order.placed / order.paid / order.cancelled like inventory would, with a
    counter per SKU (`stock`), and records every event it saw on the orders topic."""

    settings: Settings
    stock: dict[str, int] = field(default_factory=dict)
    # SKUs whose order.placed it leaves unanswered (to see 202 pending).
    silent_skus: set[str] = field(default_factory=set)
    # SKUs whose payments it answers with reservation.expired (deadline passed).
    expire_on_pay: set[str] = field(default_factory=set)
    seen: list[Envelope] = field(default_factory=list)
    _held: dict[str, dict[str, Any]] = field(default_factory=dict)
    _done: set[str] = field(default_factory=set)
    _units: dict[tuple[str, str], int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.topics = Topics.with_prefix(self.settings.topic_prefix)
        self._producer = create_producer(self.settings)
        await self._producer.start()
        self.publisher = EventPublisher(self._producer, PlatformMetrics.create())
        self._consumer = AIOKafkaConsumer(
            self.topics.orders,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{self.settings.topic_prefix}decider-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._producer.stop()

    def events(self, type_: str, order_id: str | None = None) -> list[Envelope]:
        return [
            e
            for e in self.seen
            if e.type == type_ and (order_id is None or data_of(e)["order_id"] == order_id)
        ]

    async def orders_topic_size(self) -> int:
        """Messages ever written to the orders topic (sum of the end offsets)."""
        partitions = [
            TopicPartition(self.topics.orders, p)
            for p in self._consumer.partitions_for_topic(self.topics.orders) or ()
        ]
        ends = await self._consumer.end_offsets(partitions)
        return sum(ends.values())

    async def publish_stock(self, sku: str, available: int, version: int | None = None) -> None:
        data = {"sku": sku, "received": available, "available": available, "reserved": 0, "sold": 0}
        if version is not None:
            data["version"] = version
        await self._publish("stock.changed", sku, data)

    async def _run(self) -> None:
        async for record in self._consumer:
            envelope = decode(record.value)
            self.seen.append(envelope)
            await self._decide(envelope)

    async def _decide(self, event: Envelope) -> None:
        data = data_of(event)
        sku, order_id = data["sku"], data["order_id"]
        base = {k: data[k] for k in ("order_id", "session_id", "sku", "buyer_id", "quantity")}
        if event.type == "order.placed":
            if sku in self.silent_skus or order_id in self._done:
                return
            self._done.add(order_id)
            units_key = (data["buyer_id"], sku)
            left = self.stock.get(sku, 0)
            if self._units.get(units_key, 0) + data["quantity"] > data["per_user_limit"]:
                await self._publish(
                    "reservation.rejected", sku, {**base, "reason": "limit_exceeded"}
                )
            elif left < data["quantity"]:
                await self._publish("reservation.rejected", sku, {**base, "reason": "sold_out"})
            else:
                self.stock[sku] = left - data["quantity"]
                self._units[units_key] = self._units.get(units_key, 0) + data["quantity"]
                self._held[order_id] = {**base, "total_cents": data["total_cents"]}
                expires = to_rfc3339(utc_now() + timedelta(minutes=15))
                await self._publish(
                    "reservation.confirmed",
                    sku,
                    {**base, "total_cents": data["total_cents"], "expires_at": expires},
                )
                await self.publish_stock(sku, self.stock[sku])
        elif event.type in ("order.paid", "order.cancelled"):
            hold = self._held.pop(order_id, None)
            if hold is None:
                return  # decided already (a replay) or never held: nothing to do
            if event.type == "order.paid" and sku not in self.expire_on_pay:
                await self._publish(
                    "reservation.committed",
                    sku,
                    {
                        **hold,
                        "payment_ref": data["payment_ref"],
                        "allocations": [
                            {"lot_code": "L1", "warehouse_id": "wh-1", "quantity": data["quantity"]}
                        ],
                    },
                )
                return
            self.stock[sku] = self.stock.get(sku, 0) + hold["quantity"]
            kind = (
                "reservation.released" if event.type == "order.cancelled" else "reservation.expired"
            )
            await self._publish(kind, sku, base)

    async def _publish(self, type_: str, key: str, data: dict[str, Any]) -> None:
        envelope = event(type_, data, source="decider", dedup_key=data.get("order_id"))
        await self.publisher.publish(self.topics.inventory, key, envelope)


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Stack:
    url: str
    app: web.Application
    settings: Settings
    decider: Decider
    http: aiohttp.ClientSession

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.settings.redis_prefix)


@pytest.fixture(scope="module")
async def stack(backends: Backends) -> AsyncIterator[Stack]:
    settings = settings_for(backends, new_prefix(), "live_orders")
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.http_port).start()
    decider = Decider(settings)
    await decider.start()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        yield Stack(f"http://127.0.0.1:{settings.http_port}", app, settings, decider, http)
    finally:
        await http.close()
        await decider.stop()
        await runner.cleanup()


@pytest.fixture(scope="module")
async def redis(backends: Backends) -> AsyncIterator[Any]:
    client = create_redis(backends.redis_url)
    yield client
    await client.aclose()


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def call(
    stack: Stack,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    json: Any = None,
    *,
    data: bytes | io.BytesIO | None = None,
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    async with stack.http.request(
        method, stack.url + path, headers=headers, json=json, data=data
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body, response.headers


async def live_session(
    stack: Stack,
    *,
    stock: int = 10,
    per_user_limit: int = 2,
    price_cents: int = 2500,
    **listing: Any,
) -> tuple[str, str, str]:
    """A live session with one listing; returns (session_id, host, sku)."""
    host, sku = uid("host"), uid("crab")
    status, session, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", host), {"title": "Crabs"}
    )
    assert status == 201, session
    body = {
        "sku": sku,
        "title": "Hairy crab",
        "price_cents": price_cents,
        "per_user_limit": per_user_limit,
        **listing,
    }
    status, created, _ = await call(
        stack, "POST", f"/v1/sessions/{session['session_id']}/listings", auth("host", host), body
    )
    assert status == 201, created
    status, started, _ = await call(
        stack, "POST", f"/v1/sessions/{session['session_id']}/start", auth("host", host)
    )
    assert status == 200 and started["status"] == "live", started
    stack.decider.stock[sku] = stock
    return session["session_id"], host, sku


async def order(
    stack: Stack,
    session_id: str,
    buyer: str,
    sku: str,
    quantity: int = 1,
    *,
    key: str | None = None,
    wait: float | None = 10,
) -> tuple[int, dict[str, Any], Any]:
    query = "" if wait is None else f"?wait={wait}"
    headers = {**auth("buyer", buyer), "Idempotency-Key": key or uuid.uuid4().hex}
    return await call(
        stack,
        "POST",
        f"/v1/sessions/{session_id}/orders{query}",
        headers,
        {"sku": sku, "quantity": quantity},
    )


async def order_keys(redis: Any, stack: Stack) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"{stack.settings.redis_prefix}lo:{{o:*")]


async def session_events(stack: Stack, session_id: str, until_status: str) -> list[dict[str, Any]]:
    """The session.updated events of one session on the sessions topic, read from the start
    until one with `until_status` appeared."""
    consumer = AIOKafkaConsumer(
        Topics.with_prefix(stack.settings.topic_prefix).sessions,
        bootstrap_servers=stack.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(20):
            async for record in consumer:
                envelope = decode(record.value)
                assert record.key == data_of(envelope)["session_id"].encode()
                if data_of(envelope)["session_id"] == session_id:
                    found.append(data_of(envelope))
                    if data_of(envelope)["status"] == until_status:
                        return found
    finally:
        await consumer.stop()
    return found


def is_problem(headers: Any, body: dict[str, Any], status: int) -> bool:
    return (
        headers["Content-Type"].startswith("application/problem+json")
        and body["status"] == status
        and {"type", "title", "detail"} <= body.keys()
    )


# ------------------------------------------------------------------------------- tests


async def test_session_lifecycle_roles_and_session_updated_events(stack: Stack) -> None:
    host, other = uid("host"), uid("host")
    status, body, headers = await call(stack, "POST", "/v1/sessions", None, {"title": "Tea"})
    assert status == 401 and is_problem(headers, body, 401)
    status, body, headers = await call(
        stack, "POST", "/v1/sessions", auth("buyer", "b"), {"title": "Tea"}
    )
    assert status == 403 and is_problem(headers, body, 403)
    status, body, _ = await call(
        stack, "POST", "/v1/sessions", auth("admin", "a"), {"title": "Tea"}
    )
    assert status == 422  # an admin must say for which host
    status, body, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", host), {"title": "Tea", "host_id": other}
    )
    assert status == 403

    status, session, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", host), {"title": "Tea"}
    )
    assert status == 201
    assert session["host_id"] == host and session["status"] == "scheduled"
    assert session["listings"] == [] and session["created_at"].endswith("Z")
    sid = session["session_id"]

    status, seen, _ = await call(stack, "GET", f"/v1/sessions/{sid}", auth("buyer", uid("b")))
    assert status == 200 and seen == session
    status, body, _ = await call(stack, "GET", f"/v1/sessions/{sid}", None)
    assert status == 401
    status, body, headers = await call(
        stack, "GET", "/v1/sessions/nosuchsession", auth("buyer", "b")
    )
    assert status == 404 and is_problem(headers, body, 404)

    # Another host: 404, exactly like a session that does not exist.
    for action in ("start", "end"):
        status, body, _ = await call(
            stack, "POST", f"/v1/sessions/{sid}/{action}", auth("host", other)
        )
        assert status == 404, body
        status, body, _ = await call(
            stack, "POST", f"/v1/sessions/{sid}/{action}", auth("buyer", host)
        )
        assert status == 403, body

    status, body, _ = await call(stack, "POST", f"/v1/sessions/{sid}/end", auth("host", host))
    assert status == 409  # scheduled -> ended skips live
    status, live, _ = await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))
    assert status == 200 and live["status"] == "live" and live["started_at"]
    status, again, _ = await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))
    assert status == 200 and again == live
    status, ended, _ = await call(stack, "POST", f"/v1/sessions/{sid}/end", auth("admin", "ops"))
    assert status == 200 and ended["status"] == "ended" and ended["ended_at"]
    status, body, _ = await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))
    assert status == 409

    # Admin-created session belongs to the named host.
    status, by_admin, _ = await call(
        stack, "POST", "/v1/sessions", auth("admin", "ops"), {"title": "Rice", "host_id": host}
    )
    assert status == 201 and by_admin["host_id"] == host

    published = await session_events(stack, sid, "ended")
    assert [event["status"] for event in published] == ["scheduled", "live", "ended"]
    assert published[-1] == ended


async def test_a_session_keeps_its_pavilion(stack: Stack) -> None:
    host = uid("host")
    status, session, _ = await call(
        stack,
        "POST",
        "/v1/sessions",
        auth("host", host),
        {"title": "Crabs", "pavilion": "阳澄湖馆"},
    )
    assert status == 201 and session["pavilion"] == "阳澄湖馆"
    sid = session["session_id"]
    status, seen, _ = await call(stack, "GET", f"/v1/sessions/{sid}", auth("buyer", uid("b")))
    assert status == 200 and seen["pavilion"] == "阳澄湖馆"
    status, started, _ = await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))
    assert status == 200 and started["pavilion"] == "阳澄湖馆"
    published = await session_events(stack, sid, "live")
    assert [event["pavilion"] for event in published] == ["阳澄湖馆", "阳澄湖馆"]
    status, plain, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", host), {"title": "Tea"}
    )
    assert status == 201 and plain["pavilion"] is None
    for bad in ("p" * 101, "", 7):
        status, body, headers = await call(
            stack, "POST", "/v1/sessions", auth("host", host), {"title": "Bad", "pavilion": bad}
        )
        assert status == 422 and is_problem(headers, body, 422), bad


async def test_listings_are_validated_and_shown_with_the_session(stack: Stack) -> None:
    host = uid("host")
    _, session, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", host), {"title": "Peaches"}
    )
    path = f"/v1/sessions/{session['session_id']}/listings"
    good = {
        "sku": uid("peach"),
        "title": "Peach box",
        "price_cents": 3900,
        "per_user_limit": 3,
        "sale_starts_at": "2030-01-01T08:00:00+08:00",
        "sale_ends_at": None,
    }
    bad_bodies = [
        {k: v for k, v in good.items() if k != "price_cents"},
        {**good, "price_cents": "3900"},
        {**good, "price_cents": 39.5},
        {**good, "price_cents": 3900.0},
        {**good, "price_cents": -1},
        {**good, "per_user_limit": 0},
        {**good, "stock": 10},
        {**good, "sku": "bad {sku}"},
        {**good, "sale_starts_at": "tomorrow"},
        {**good, "sale_starts_at": "2030-01-01T08:00:00"},  # no offset: refused, not guessed
        {**good, "sale_ends_at": "2029-12-31T00:00:00Z"},  # ends before it starts
        ["not", "an", "object"],
    ]
    for bad in bad_bodies:
        status, body, headers = await call(stack, "POST", path, auth("host", host), bad)
        assert status == 422 and is_problem(headers, body, 422), (bad, body)
    status, body, _ = await call(stack, "POST", path, auth("host", host), data=b"{nope")
    assert status == 400
    status, body, _ = await call(stack, "POST", path, auth("host", uid("host")), good)
    assert status == 404
    status, body, _ = await call(stack, "POST", path, auth("buyer", host), good)
    assert status == 403

    status, listing, _ = await call(stack, "POST", path, auth("host", host), good)
    assert status == 201
    assert listing == {**good, "sale_starts_at": "2030-01-01T00:00:00.000Z"}
    status, body, _ = await call(
        stack, "POST", path, auth("host", host), {**good, "title": "again"}
    )
    assert status == 409 and is_problem(_, body, 409)

    status, shown, _ = await call(
        stack, "GET", f"/v1/sessions/{session['session_id']}", auth("buyer", "b")
    )
    assert shown["listings"] == [listing]

    await call(stack, "POST", f"/v1/sessions/{session['session_id']}/start", auth("host", host))
    await call(stack, "POST", f"/v1/sessions/{session['session_id']}/end", auth("host", host))
    status, body, _ = await call(
        stack, "POST", path, auth("host", host), {**good, "sku": uid("late")}
    )
    assert status == 409


async def test_orders_reserve_then_reject_over_limit_and_sold_out(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=3, per_user_limit=2, price_cents=2500)
    buyer = uid("buyer")
    status, reserved, headers = await order(stack, sid, buyer, sku, 2)
    assert status == 201, reserved
    assert headers["Content-Type"].startswith("application/json")
    assert reserved["status"] == "reserved"
    assert reserved["session_id"] == sid and reserved["sku"] == sku and reserved["quantity"] == 2
    assert reserved["unit_price_cents"] == 2500 and reserved["total_cents"] == 5000
    assert reserved["expires_at"].endswith("Z")
    placed = stack.decider.events("order.placed", reserved["order_id"])
    assert len(placed) == 1
    assert data_of(placed[0])["buyer_id"] == buyer and data_of(placed[0])["per_user_limit"] == 2
    assert data_of(placed[0])["total_cents"] == 5000

    status, over, _ = await order(stack, sid, buyer, sku, 1)
    assert status == 409 and over["status"] == "rejected" and over["reason"] == "limit_exceeded"
    assert over["order_id"] != reserved["order_id"]

    status, _, _ = await order(stack, sid, uid("buyer"), sku, 1)
    assert status == 201
    status, late, _ = await order(stack, sid, uid("buyer"), sku, 1)
    assert status == 409 and late["status"] == "rejected" and late["reason"] == "sold_out"

    # Reading an order: its buyer and admins; another buyer is told it does not exist.
    path = f"/v1/orders/{reserved['order_id']}"
    status, seen, _ = await call(stack, "GET", path, auth("buyer", buyer))
    assert status == 200 and seen == reserved
    status, _, _ = await call(stack, "GET", path, auth("admin", "ops"))
    assert status == 200
    status, _, _ = await call(stack, "GET", path, auth("buyer", uid("buyer")))
    assert status == 404
    status, _, _ = await call(stack, "GET", path, auth("host", "h"))
    assert status == 403
    status, _, _ = await call(stack, "GET", "/v1/orders/0000", auth("buyer", buyer))
    assert status == 404


async def test_no_decision_within_wait_is_202_and_get_long_polls(stack: Stack) -> None:
    sid, _, sku = await live_session(stack)
    stack.decider.silent_skus.add(sku)
    buyer = uid("buyer")
    started = time.monotonic()
    status, pending, _ = await order(stack, sid, buyer, sku, wait=0.3)
    elapsed = time.monotonic() - started
    assert status == 202 and pending["status"] == "pending", pending
    assert 0.3 <= elapsed < 2.0
    started = time.monotonic()
    status, _, _ = await order(stack, sid, buyer, sku, wait=0)
    assert status == 202 and time.monotonic() - started < 1.0

    path = f"/v1/orders/{pending['order_id']}"
    for bad in ("abc", "-1", "nan"):
        status, body, _ = await call(stack, "GET", f"{path}?wait={bad}", auth("buyer", buyer))
        assert status == 400, body
    status, still, _ = await call(stack, "GET", f"{path}?wait=0", auth("buyer", buyer))
    assert status == 200 and still["status"] == "pending"

    # A long poll started before the decision returns as soon as it lands.
    poll = asyncio.create_task(call(stack, "GET", f"{path}?wait=8", auth("buyer", buyer)))
    await eventually(lambda: _waiting(stack), what="the GET to be waiting", timeout=5)
    started = time.monotonic()
    await stack.decider._publish(
        "reservation.confirmed",
        sku,
        {
            **{k: pending[k] for k in ("order_id", "session_id", "sku", "quantity", "total_cents")},
            "buyer_id": buyer,
            "expires_at": "2030-01-01T00:00:00.000Z",
        },
    )
    status, decided, _ = await poll
    assert status == 200 and decided["status"] == "reserved"
    assert decided["expires_at"] == "2030-01-01T00:00:00.000Z"
    assert time.monotonic() - started < 3.0


def sample(stack: Stack, name: str, **labels: str) -> float:
    return stack.app[METRICS].registry.get_sample_value(name, labels) or 0.0


async def _waiting(stack: Stack) -> bool:
    return sample(stack, "lc_live_orders_waiters") > 0


async def test_idempotency_key_gives_one_order_even_when_concurrent(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=100, per_user_limit=5)
    buyer, key = uid("buyer"), uuid.uuid4().hex
    answers = await asyncio.gather(*(order(stack, sid, buyer, sku, 1, key=key) for _ in range(50)))
    order_ids = {body["order_id"] for _, body, _ in answers}
    assert len(order_ids) == 1, answers[:3]
    assert {status for status, _, _ in answers} == {201}
    (order_id,) = order_ids
    await eventually(lambda: _decided(stack, order_id), what="decider saw the order")
    assert len(stack.decider.events("order.placed", order_id)) == 1
    assert stack.decider.stock[sku] == 99

    status, replay, _ = await order(stack, sid, buyer, sku, 1, key=key)
    assert status == 201 and replay["order_id"] == order_id
    status, body, headers = await order(stack, sid, buyer, sku, 2, key=key)
    assert status == 422 and is_problem(headers, body, 422)
    # Keys are scoped per buyer: another buyer's same key is another order.
    status, other, _ = await order(stack, sid, uid("buyer"), sku, 1, key=key)
    assert status == 201 and other["order_id"] != order_id

    status, body, headers = await call(
        stack,
        "POST",
        f"/v1/sessions/{sid}/orders",
        auth("buyer", buyer),
        {"sku": sku, "quantity": 1},
    )
    assert status == 400 and is_problem(headers, body, 400)


async def _decided(stack: Stack, order_id: str) -> bool:
    return bool(stack.decider.events("order.placed", order_id))


async def test_bad_order_requests_change_nothing(stack: Stack, redis: Any) -> None:
    sid, _, sku = await live_session(stack, per_user_limit=2)
    buyer, key = uid("buyer"), uuid.uuid4().hex
    headers = {**auth("buyer", buyer), "Idempotency-Key": key}
    path = f"/v1/sessions/{sid}/orders"
    before = await stack.decider.orders_topic_size()
    cases: list[tuple[Any, int]] = [
        ({"sku": uid("nosuch"), "quantity": 1}, 422),
        ({"sku": sku, "quantity": 0}, 422),
        ({"sku": sku, "quantity": 3}, 422),
        ({"sku": sku, "quantity": 1, "price_cents": 1}, 422),
        ({"sku": sku, "quantity": 1, "user_id": "someone-else"}, 422),
        ({"sku": sku, "quantity": "1"}, 422),
        ({"sku": sku, "quantity": 1.0}, 422),
        ({"sku": sku}, 422),
        ([sku, 1], 422),
    ]
    for body, expected in cases:
        status, answer, got = await call(stack, "POST", path, headers, body)
        assert status == expected and is_problem(got, answer, expected), (body, answer)
    status, answer, got = await call(stack, "POST", path, headers, data=b'{"sku": ')
    assert status == 400 and is_problem(got, answer, 400)
    status, answer, got = await call(stack, "POST", path, headers, data=b"")
    assert status == 400
    huge = b'{"sku": "' + b"x" * (2 * 1024 * 1024) + b'", "quantity": 1}'
    status, answer, got = await call(stack, "POST", path, headers, data=io.BytesIO(huge))
    assert status == 413 and is_problem(got, answer, 413)
    status, answer, _ = await call(
        stack, "POST", "/v1/sessions/nosuchsession/orders", headers, {"sku": sku, "quantity": 1}
    )
    assert status == 404
    status, answer, _ = await call(
        stack, "POST", path, {**headers, **auth("host", buyer)}, {"sku": sku, "quantity": 1}
    )
    assert status == 403

    # Nothing published, nothing claimed or stored for this buyer (no bucket, no key)...
    assert await stack.decider.orders_topic_size() == before
    assert [
        k async for k in redis.scan_iter(match=f"{stack.settings.redis_prefix}lo:{{b:{buyer}}}*")
    ] == []
    # ...so the same Idempotency-Key still makes a fresh order.
    status, placed, _ = await call(
        stack, "POST", path + "?wait=10", headers, {"sku": sku, "quantity": 1}
    )
    assert status == 201, placed
    assert await stack.decider.orders_topic_size() == before + 1


async def test_rate_limit_stops_a_bot_but_not_a_human(stack: Stack) -> None:
    sid, _, sku = await live_session(stack, stock=1000, per_user_limit=1000)
    human = uid("human")
    presses = await asyncio.gather(*(order(stack, sid, human, sku, 1, wait=0) for _ in range(3)))
    # Three presses with three keys (a client that sent one key would only replay).
    assert all(status in (201, 202) for status, _, _ in presses), presses

    bot = uid("bot")
    answers = [await order(stack, sid, bot, sku, 1, wait=0) for _ in range(25)]
    statuses = [status for status, _, _ in answers]
    assert all(status in (201, 202) for status in statuses[: stack.settings.rate_limit_burst])
    limited = [(body, headers) for status, body, headers in answers if status == 429]
    assert limited, statuses
    body, headers = limited[0]
    assert is_problem(headers, body, 429)
    assert int(headers["Retry-After"]) >= 1
    accepted = sum(1 for status in statuses if status != 429)
    # A refused attempt was never an order: the decider sees exactly the accepted ones.
    await eventually(
        lambda: _count_placed(stack, bot, accepted), what="accepted orders reach the topic"
    )


async def _count_placed(stack: Stack, buyer: str, expected: int) -> bool:
    placed = [e for e in stack.decider.events("order.placed") if data_of(e)["buyer_id"] == buyer]
    assert len(placed) == expected, (len(placed), expected)
    return True


async def test_not_on_sale_before_start_after_end_and_outside_the_window(stack: Stack) -> None:
    host, sku = uid("host"), uid("rice")
    _, session, _ = await call(stack, "POST", "/v1/sessions", auth("host", host), {"title": "Rice"})
    sid = session["session_id"]
    soon = to_rfc3339(utc_now() + timedelta(hours=1))
    past = to_rfc3339(utc_now() - timedelta(hours=1))
    listings = [
        {"sku": sku, "title": "Rice", "price_cents": 100, "per_user_limit": 5},
        {
            "sku": sku + "-later",
            "title": "Rice",
            "price_cents": 100,
            "per_user_limit": 5,
            "sale_starts_at": soon,
        },
        {
            "sku": sku + "-over",
            "title": "Rice",
            "price_cents": 100,
            "per_user_limit": 5,
            "sale_ends_at": past,
        },
    ]
    for listing in listings:
        status, _, _ = await call(
            stack, "POST", f"/v1/sessions/{sid}/listings", auth("host", host), listing
        )
        assert status == 201
    stack.decider.stock[sku] = 10
    rejected: list[str] = []

    status, body, _ = await order(stack, sid, uid("buyer"), sku)
    assert status == 409 and body["status"] == "rejected" and body["reason"] == "not_on_sale"
    rejected.append(body["order_id"])
    await call(stack, "POST", f"/v1/sessions/{sid}/start", auth("host", host))
    for closed in (sku + "-later", sku + "-over"):
        status, body, _ = await order(stack, sid, uid("buyer"), closed)
        assert status == 409 and body["reason"] == "not_on_sale", body
        rejected.append(body["order_id"])
    status, body, _ = await order(stack, sid, uid("buyer"), sku)
    assert status == 201
    await call(stack, "POST", f"/v1/sessions/{sid}/end", auth("host", host))
    status, body, _ = await order(stack, sid, uid("buyer"), sku)
    assert status == 409 and body["reason"] == "not_on_sale"
    rejected.append(body["order_id"])

    async def all_published() -> bool:
        for order_id in rejected:
            events = stack.decider.events("order.rejected", order_id)
            assert len(events) == 1 and data_of(events[0])["reason"] == "not_on_sale", order_id
            assert not stack.decider.events("order.placed", order_id)
        return True

    await eventually(all_published, what="order.rejected for every not_on_sale attempt")


async def test_sold_out_fast_path_answers_without_inventory(stack: Stack, redis: Any) -> None:
    sid, _, sku = await live_session(stack, stock=5)
    await stack.decider.publish_stock(sku, 0)

    async def marked() -> bool:
        return bool(await redis.sismember(stack.keys.sold_out, sku))

    await eventually(marked, interval=0.005, what="stock.changed applied")
    marked_at = time.monotonic()
    while True:
        status, body, _ = await order(stack, sid, uid("buyer"), sku, wait=5)
        if status == 409 and body.get("reason") == "sold_out":
            break
        assert time.monotonic() - marked_at < 0.25, "sold out not known within 250 ms"
    assert time.monotonic() - marked_at < 0.25 + 0.1  # plus the one request in flight
    assert body["status"] == "rejected"
    rejected_id = body["order_id"]
    status, stored, _ = await call(stack, "GET", f"/v1/orders/{rejected_id}", auth("admin", "ops"))
    assert status == 200 and stored["status"] == "rejected" and stored["reason"] == "sold_out"

    async def published() -> bool:
        events = stack.decider.events("order.rejected", rejected_id)
        assert len(events) == 1 and data_of(events[0])["reason"] == "sold_out"
        return True

    await eventually(published, what="order.rejected published")
    assert not stack.decider.events("order.placed", rejected_id)  # inventory never asked

    await stack.decider.publish_stock(sku, 5)

    async def restocked() -> bool:
        return not await redis.sismember(stack.keys.sold_out, sku)

    await eventually(restocked, interval=0.005, what="restock applied")

    async def goes_through() -> bool:
        status, body, _ = await order(stack, sid, uid("buyer"), sku)
        assert status == 201, body
        return True

    await eventually(goes_through, timeout=2, what="orders go through after restock")


async def test_an_older_sold_out_snapshot_published_after_a_restock_is_ignored(
    stack: Stack, redis: Any
) -> None:
    """Two inventory processes may publish stock.changed in the opposite order of the
    states they read: the later offset is the older state. The version decides."""
    sid, _, sku = await live_session(stack, stock=5)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(stack.keys.stock_channel)
    heard: list[str] = []

    async def heard_all(expected: list[str]) -> bool:
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message["data"].decode().endswith(" " + sku):
            heard.append(message["data"].decode())
        return heard == expected

    try:
        await stack.decider.publish_stock(sku, 0, version=5)
        await eventually(lambda: heard_all([f"1 {sku}"]), what="sold out at version 5")
        await stack.decider.publish_stock(sku, 3, version=8)  # restocked
        await stack.decider.publish_stock(sku, 0, version=7)  # older, arrives later
        # Same key, so consumed after the two above: once it is heard, both were decided.
        await stack.decider.publish_stock(sku, 2, version=9)
        await eventually(
            lambda: heard_all([f"1 {sku}", f"0 {sku}", f"0 {sku}"]),
            what="restock and the newest snapshot, never the older sold out",
        )
    finally:
        await pubsub.aclose()
    assert not await redis.sismember(stack.keys.sold_out, sku)

    async def goes_through() -> bool:
        status, body, _ = await order(stack, sid, uid("buyer"), sku)
        assert status == 201, body
        return True

    await eventually(goes_through, timeout=2, what="orders go through (the fast path agrees)")


async def reserved_order(stack: Stack, **listing: Any) -> tuple[str, dict[str, Any], str]:
    sid, _, sku = await live_session(stack, **listing)
    buyer = uid("buyer")
    status, body, _ = await order(stack, sid, buyer, sku, 2)
    assert status == 201, body
    return buyer, body, sku


async def test_payment_paths(stack: Stack) -> None:
    buyer, reserved, _ = await reserved_order(stack, price_cents=1250)
    order_id, path = reserved["order_id"], f"/v1/orders/{reserved['order_id']}/payment"
    pay = auth("payments", "psp")
    status, body, headers = await call(
        stack, "POST", path, pay, {"payment_ref": "p1", "amount_cents": 2499}
    )
    assert status == 422 and is_problem(headers, body, 422)
    status, body, _ = await call(
        stack, "POST", path, pay, {"payment_ref": "p1", "amount_cents": 2500, "x": 1}
    )
    assert status == 422
    status, body, _ = await call(
        stack, "POST", path, auth("buyer", buyer), {"payment_ref": "p1", "amount_cents": 2500}
    )
    assert status == 403
    status, body, _ = await call(
        stack,
        "POST",
        "/v1/orders/nosuchorder/payment",
        pay,
        {"payment_ref": "p1", "amount_cents": 1},
    )
    assert status == 404

    status, paid, headers = await call(
        stack, "POST", path, pay, {"payment_ref": "p1", "amount_cents": 2500}
    )
    assert status == 200 and paid["status"] == "paid" and paid["payment_ref"] == "p1", paid
    assert headers["Content-Type"].startswith("application/json")
    status, again, _ = await call(
        stack, "POST", path, pay, {"payment_ref": "p1", "amount_cents": 2500}
    )
    assert status == 200 and again["status"] == "paid"
    status, other, _ = await call(
        stack, "POST", path, auth("admin", "ops"), {"payment_ref": "p2", "amount_cents": 2500}
    )
    assert status == 409 and other["status"] == "paid" and other["payment_ref"] == "p1"
    status, cancelled, _ = await call(
        stack, "POST", f"/v1/orders/{order_id}/cancel", auth("buyer", buyer)
    )
    assert status == 409 and cancelled["status"] == "paid"
    assert len(stack.decider.events("order.paid", order_id)) == 1

    # Not payable: still pending, rejected, or expired before the payment arrived.
    sid, _, silent = await live_session(stack)
    stack.decider.silent_skus.add(silent)
    status, pending, _ = await order(stack, sid, uid("buyer"), silent, wait=0)
    assert status == 202
    status, body, _ = await call(
        stack,
        "POST",
        f"/v1/orders/{pending['order_id']}/payment",
        pay,
        {"payment_ref": "p3", "amount_cents": 2500},
    )
    assert status == 409 and body["status"] == "pending"

    sid, _, empty = await live_session(stack, stock=0)
    status, rejected, _ = await order(stack, sid, uid("buyer"), empty)
    assert status == 409
    status, body, _ = await call(
        stack,
        "POST",
        f"/v1/orders/{rejected['order_id']}/payment",
        pay,
        {"payment_ref": "p4", "amount_cents": 2500},
    )
    assert status == 409 and body["status"] == "rejected"

    _, late, late_sku = await reserved_order(stack)
    stack.decider.expire_on_pay.add(late_sku)
    status, body, _ = await call(
        stack,
        "POST",
        f"/v1/orders/{late['order_id']}/payment",
        pay,
        {"payment_ref": "p5", "amount_cents": 5000},
    )
    assert status == 409 and body["status"] == "expired", body


async def test_cancel_paths(stack: Stack) -> None:
    buyer, reserved, sku = await reserved_order(stack, stock=2)
    path = f"/v1/orders/{reserved['order_id']}/cancel"
    assert stack.decider.stock[sku] == 0
    status, _, _ = await call(stack, "POST", path, auth("buyer", uid("buyer")))
    assert status == 404
    status, _, _ = await call(stack, "POST", path, auth("payments", "psp"))
    assert status == 403
    status, cancelled, _ = await call(stack, "POST", path, auth("buyer", buyer))
    assert status == 200 and cancelled["status"] == "cancelled"
    assert stack.decider.stock[sku] == 2  # released back to the pool
    status, again, _ = await call(stack, "POST", path, auth("admin", "ops"))
    assert status == 200 and again["status"] == "cancelled"
    status, body, _ = await call(
        stack,
        "POST",
        f"/v1/orders/{reserved['order_id']}/payment",
        auth("payments", "psp"),
        {"payment_ref": "p1", "amount_cents": reserved["total_cents"]},
    )
    assert status == 409 and body["status"] == "cancelled"
    assert len(stack.decider.events("order.cancelled", reserved["order_id"])) == 1


async def test_pay_and_cancel_racing_one_wins(stack: Stack) -> None:
    for _ in range(4):
        buyer, reserved, _ = await reserved_order(stack)
        order_id = reserved["order_id"]
        (pay_status, paid, _), (cancel_status, cancelled, _) = await asyncio.gather(
            call(
                stack,
                "POST",
                f"/v1/orders/{order_id}/payment",
                auth("payments", "psp"),
                {"payment_ref": "race", "amount_cents": reserved["total_cents"]},
            ),
            call(stack, "POST", f"/v1/orders/{order_id}/cancel", auth("buyer", buyer)),
        )
        assert sorted([pay_status, cancel_status]) == [200, 409], (paid, cancelled)
        final = "paid" if pay_status == 200 else "cancelled"
        assert paid["status"] == cancelled["status"] == final
        sent = stack.decider.events("order.paid", order_id) + stack.decider.events(
            "order.cancelled", order_id
        )
        assert [event.type for event in sent] == [f"order.{final}"]


async def test_replayed_and_stale_outcomes_change_nothing(stack: Stack) -> None:
    buyer, reserved, sku = await reserved_order(stack)
    order_id = reserved["order_id"]
    status, paid, _ = await call(
        stack,
        "POST",
        f"/v1/orders/{order_id}/payment",
        auth("payments", "psp"),
        {"payment_ref": "p1", "amount_cents": reserved["total_cents"]},
    )
    assert status == 200
    stale = {"type": "reservation.expired", "why": "stale"}
    base = {k: reserved[k] for k in ("order_id", "session_id", "sku", "quantity")} | {
        "buyer_id": buyer
    }
    before = sample(stack, "lc_live_orders_ignored_outcomes_total", **stale)
    await stack.decider._publish(
        "reservation.confirmed",
        sku,
        {**base, "total_cents": 1, "expires_at": "2031-01-01T00:00:00Z"},
    )
    await stack.decider._publish("reservation.expired", sku, base)

    async def applied() -> bool:
        return sample(stack, "lc_live_orders_ignored_outcomes_total", **stale) > before

    await eventually(applied, what="the stale events were consumed")
    status, now, _ = await call(stack, "GET", f"/v1/orders/{order_id}", auth("buyer", buyer))
    assert now == paid


async def test_readiness_and_metrics(stack: Stack) -> None:
    status, body, _ = await call(stack, "GET", "/readyz")
    assert status == 200 and body["checks"]["consumer"] and body["checks"]["broadcast"]
    async with stack.http.get(stack.url + "/metrics") as response:
        text = await response.text()
    for name in (
        "lc_live_orders_order_outcomes_total",
        "lc_live_orders_fast_path_rejections_total",
        "lc_live_orders_rate_limited_total",
        "lc_live_orders_decision_seconds_count",
        "lc_live_orders_waiters",
    ):
        assert name in text, name
    assert 'lc_live_orders_order_outcomes_total{outcome="reserved"}' in text
