"""live_orders in this process on the real Kafka broker and Redis, with a stand-in for
inventory, and the HTTP calls the tests make to it.

`Decider` stands in for inventory: a real aiokafka consumer on the orders topic that
answers on the real inventory topic with a plain stock counter per SKU. One stack (app and
decider) serves every test of tests/integration/live_orders (starting them per test would
cost most of the time budget); tests keep apart by using their own session, SKU and buyer
names, never a shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.clock import to_rfc3339, utc_now
from services.common.events import Envelope, decode
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from services.common.web_app import METRICS
from services.live_orders.app import create_app
from services.live_orders.redis_keys import RedisKeys
from tests.conftest import Backends, auth, new_prefix, settings_for
from tests.events import data_of, event

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
            if e.type == type_ and (order_id is None or data_of(e).get("order_id") == order_id)
        ]

    def tallied(self, session_id: str) -> tuple[int, int]:
        """(sold_out, not_on_sale) attempts counted in the session's tallies so far, each
        tally once (a republished one carries its tally_id again)."""
        tallies = {
            data["tally_id"]: data
            for data in map(data_of, self.events("attempts.tallied"))
            if data["session_id"] == session_id
        }
        return (
            sum(t["sold_out"] for t in tallies.values()),
            sum(t["not_on_sale"] for t in tallies.values()),
        )

    def events_of_buyer(self, buyer: str) -> list[Envelope]:
        return [e for e in self.seen if data_of(e).get("buyer_id") == buyer]

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
        await self.publish("stock.changed", sku, data)

    async def publish(self, type_: str, key: str, data: dict[str, Any]) -> None:
        """Put an event on the inventory topic as inventory would."""
        envelope = event(type_, data, source="decider", dedup_key=data.get("order_id"))
        await self.publisher.publish(self.topics.inventory, key, envelope)

    async def _run(self) -> None:
        async for record in self._consumer:
            envelope = decode(record.value)
            self.seen.append(envelope)
            await self._decide(envelope)

    async def _decide(self, event: Envelope) -> None:
        data = data_of(event)
        if "order_id" not in data:  # attempts.tallied: nothing for inventory to decide
            return
        sku, order_id = data["sku"], data["order_id"]
        base = {k: data[k] for k in ("order_id", "session_id", "sku", "buyer_id", "quantity")}
        if event.type == "order.placed":
            if sku in self.silent_skus or order_id in self._done:
                return
            self._done.add(order_id)
            units_key = (data["buyer_id"], sku)
            left = self.stock.get(sku, 0)
            if self._units.get(units_key, 0) + data["quantity"] > data["per_user_limit"]:
                await self.publish(
                    "reservation.rejected", sku, {**base, "reason": "limit_exceeded"}
                )
            elif left < data["quantity"]:
                await self.publish("reservation.rejected", sku, {**base, "reason": "sold_out"})
            else:
                self.stock[sku] = left - data["quantity"]
                self._units[units_key] = self._units.get(units_key, 0) + data["quantity"]
                self._held[order_id] = {**base, "total_cents": data["total_cents"]}
                expires = to_rfc3339(utc_now() + timedelta(minutes=15))
                await self.publish(
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
                await self.publish(
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
            await self.publish(kind, sku, base)


# ------------------------------------------------------------------------------ the stack


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

    def sample(self, name: str, **labels: str) -> float:
        """A metric of the app, read from its registry."""
        return self.app[METRICS].registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def running_stack(backends: Backends) -> AsyncIterator[Stack]:
    """live_orders on its own topic and key prefix, served on a free port, with a decider."""
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


# ------------------------------------------------------------------------ calls to the app

Answer = tuple[int, dict[str, Any], Any]
PAYMENTS = auth("payments", "psp")
ADMIN = auth("admin", "ops")


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
) -> Answer:
    """(status, JSON body, headers) of one request to the app."""
    async with stack.http.request(
        method, stack.url + path, headers=headers, json=json, data=data
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body, response.headers


def is_problem(headers: Any, body: dict[str, Any], status: int) -> bool:
    return (
        headers["Content-Type"].startswith("application/problem+json")
        and body["status"] == status
        and {"type", "title", "detail"} <= body.keys()
    )


async def new_session(stack: Stack, host: str, title: str = "Crabs") -> dict[str, Any]:
    """A scheduled session of `host`, as created."""
    status, session, _ = await call(
        stack, "POST", "/v1/sessions", auth("host", host), {"title": title}
    )
    assert status == 201, session
    return session


async def add_listing(
    stack: Stack,
    session_id: str,
    host: str,
    sku: str,
    *,
    per_user_limit: int = 2,
    price_cents: int = 2500,
    **listing: Any,
) -> None:
    body = {
        "sku": sku,
        "title": "Hairy crab",
        "price_cents": price_cents,
        "per_user_limit": per_user_limit,
        **listing,
    }
    status, created, _ = await call(
        stack, "POST", f"/v1/sessions/{session_id}/listings", auth("host", host), body
    )
    assert status == 201, created


async def move_session(stack: Stack, session_id: str, host: str, action: str) -> dict[str, Any]:
    """Start or end a session as its host."""
    status, moved, _ = await call(
        stack, "POST", f"/v1/sessions/{session_id}/{action}", auth("host", host)
    )
    assert status == 200, moved
    return moved


async def live_session(
    stack: Stack,
    *,
    stock: int = 10,
    per_user_limit: int = 2,
    price_cents: int = 2500,
    **listing: Any,
) -> tuple[str, str, str]:
    """A live session with one listing the decider holds `stock` of; returns
    (session_id, host, sku)."""
    host, sku = uid("host"), uid("crab")
    session_id = (await new_session(stack, host))["session_id"]
    await add_listing(
        stack,
        session_id,
        host,
        sku,
        per_user_limit=per_user_limit,
        price_cents=price_cents,
        **listing,
    )
    started = await move_session(stack, session_id, host, "start")
    assert started["status"] == "live", started
    stack.decider.stock[sku] = stock
    return session_id, host, sku


async def order(
    stack: Stack,
    session_id: str,
    buyer: str,
    sku: str,
    quantity: int = 1,
    *,
    key: str | None = None,
    wait: float | None = 10,
) -> Answer:
    """Place an order as `buyer` (a fresh Idempotency-Key unless `key`)."""
    query = "" if wait is None else f"?wait={wait}"
    headers = {**auth("buyer", buyer), "Idempotency-Key": key or uuid.uuid4().hex}
    return await call(
        stack,
        "POST",
        f"/v1/sessions/{session_id}/orders{query}",
        headers,
        {"sku": sku, "quantity": quantity},
    )


async def reserved_order(stack: Stack, **listing: Any) -> tuple[str, dict[str, Any], str]:
    """An order of 2 units reserved in a fresh live session; returns (buyer, order, sku)."""
    sid, _, sku = await live_session(stack, **listing)
    buyer = uid("buyer")
    status, body, _ = await order(stack, sid, buyer, sku, 2)
    assert status == 201, body
    return buyer, body, sku


async def pending_order(stack: Stack) -> tuple[str, dict[str, Any], str]:
    """An order the decider never answers, as placed with wait=0; returns (buyer, order,
    sku)."""
    sid, _, sku = await live_session(stack)
    stack.decider.silent_skus.add(sku)
    buyer = uid("buyer")
    status, body, _ = await order(stack, sid, buyer, sku, wait=0)
    assert status == 202 and body["status"] == "pending", body
    return buyer, body, sku


async def pay(
    stack: Stack,
    order_id: str,
    body: Any,
    headers: dict[str, str] = PAYMENTS,
) -> Answer:
    return await call(stack, "POST", f"/v1/orders/{order_id}/payment", headers, body)


async def cancel(stack: Stack, order_id: str, headers: dict[str, str]) -> Answer:
    return await call(stack, "POST", f"/v1/orders/{order_id}/cancel", headers)


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
