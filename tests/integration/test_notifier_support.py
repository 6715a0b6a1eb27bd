"""What the notifier tests share (this module holds no tests): a driver that publishes a
simulated flash sale onto the real topics, and the truth computed from what it sent,
written independently of the notifier's projection code."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from services.common.clock import now_rfc3339
from services.common.events import Envelope
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings
from services.notifier.projection import TOTAL_FIELDS
from tests.events import event
from tests.waiting import eventually

# The contract's totals (DESIGN 4.5), as the projection names them.
TOTALS = TOTAL_FIELDS

Item = tuple[str, str, Envelope]


@dataclass
class Truth:
    """Host counters and SKU stock of one session, as the events sent imply them."""

    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0))
    skus: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Hold:
    order_id: str
    sku: str
    buyer: str
    quantity: int
    total_cents: int


class Sale:
    """Acts as live_orders and inventory would for one session: each call returns the
    events to publish and updates the truth."""

    def __init__(
        self,
        topics: Topics,
        session_id: str,
        host_id: str,
        stock: dict[str, int],
        *,
        price_cents: int = 1999,
        warehouse_id: str = "wh-1",
        pavilion: str | None = None,
    ) -> None:
        self.topics = topics
        self.pavilion = pavilion
        self.session_id = session_id
        self.host_id = host_id
        self.price_cents = price_cents
        self.warehouse_id = warehouse_id
        self.received = dict(stock)
        self.available = dict(stock)
        self.reserved = dict.fromkeys(stock, 0)
        self.sold = dict.fromkeys(stock, 0)
        self.truth = Truth()
        self.holds: list[_Hold] = []
        self.picks: list[dict[str, Any]] = []

    def _envelope(self, type_: str, data: dict[str, Any], dedup: str | None = None) -> Envelope:
        return event(type_, data, source="test", dedup_key=dedup)

    def session_updated(self, status: str = "live") -> list[Item]:
        data = {
            "session_id": self.session_id,
            "host_id": self.host_id,
            "title": f"Hairy crab night {self.session_id[-4:]}",
            "status": status,
            "listings": [
                {
                    "sku": sku,
                    "title": f"Yangcheng Lake crab {sku[-3:]}",
                    "price_cents": self.price_cents,
                    "per_user_limit": 2,
                    "sale_starts_at": None,
                    "sale_ends_at": None,
                }
                for sku in self.received
            ],
            "created_at": now_rfc3339(),
        }
        if self.pavilion is not None:
            data["pavilion"] = self.pavilion
        return [(self.topics.sessions, self.session_id, self._envelope("session.updated", data))]

    def stock_changed(self, sku: str) -> Item:
        data = {
            "sku": sku,
            "received": self.received[sku],
            "available": self.available[sku],
            "reserved": self.reserved[sku],
            "sold": self.sold[sku],
        }
        self.truth.skus[sku] = {
            "available": self.available[sku],
            "reserved": self.reserved[sku],
            "sold": self.sold[sku],
        }
        return (self.topics.inventory, sku, self._envelope("stock.changed", data))

    def all_stock(self) -> list[Item]:
        return [self.stock_changed(sku) for sku in self.received]

    def attempt(self, sku: str, quantity: int = 1, *, over_limit: bool = False) -> list[Item]:
        """A buyer presses buy: placed, then inventory's decision (and the stock)."""
        order_id = str(uuid.uuid4())
        buyer = f"b-{order_id[:8]}"
        base = {
            "order_id": order_id,
            "session_id": self.session_id,
            "sku": sku,
            "buyer_id": buyer,
            "quantity": quantity,
        }
        total = quantity * self.price_cents
        if self.available[sku] == 0 and not over_limit:
            # live_orders' sold-out fast path: never reaches inventory, counted in a tally
            # (sent twice, as after a crash: the same tally counts once)
            self.truth.totals["attempts"] += 1
            self.truth.totals["rejected_sold_out"] += 1
            tally = {
                "tally_id": f"tally-{order_id}",
                "session_id": self.session_id,
                "sold_out": 1,
                "not_on_sale": 0,
                "tallied_at": now_rfc3339(),
            }
            item = (self.topics.orders, self.session_id, self._envelope("attempts.tallied", tally))
            return [item, item]
        placed = {
            **base,
            "unit_price_cents": self.price_cents,
            "total_cents": total,
            "per_user_limit": 2,
            "placed_at": now_rfc3339(),
        }
        self.truth.totals["attempts"] += 1
        items: list[Item] = [
            (self.topics.orders, sku, self._envelope("order.placed", placed, order_id))
        ]
        if over_limit or self.available[sku] < quantity:
            reason = "limit_exceeded" if over_limit else "sold_out"
            self.truth.totals["rejected_limit" if over_limit else "rejected_sold_out"] += 1
            items.append(
                (
                    self.topics.inventory,
                    sku,
                    self._envelope("reservation.rejected", {**base, "reason": reason}, order_id),
                )
            )
            return items
        self.available[sku] -= quantity
        self.reserved[sku] += quantity
        self.truth.totals["reserved_orders"] += 1
        self.truth.totals["units_reserved"] += quantity
        self.holds.append(_Hold(order_id, sku, buyer, quantity, total))
        confirmed = {**base, "total_cents": total, "expires_at": now_rfc3339()}
        items.append(
            (
                self.topics.inventory,
                sku,
                self._envelope("reservation.confirmed", confirmed, order_id),
            )
        )
        items.append(self.stock_changed(sku))
        return items

    def settle(self, outcome: str, *, trace_code: str | None = None) -> list[Item]:
        """The oldest open hold is paid ('committed'), 'released' or 'expired'; a paid
        one's pick task carries `trace_code` if given."""
        hold = self.holds.pop(0)
        base = {
            "order_id": hold.order_id,
            "session_id": self.session_id,
            "sku": hold.sku,
            "buyer_id": hold.buyer,
            "quantity": hold.quantity,
        }
        self.reserved[hold.sku] -= hold.quantity
        self.truth.totals["units_reserved"] -= hold.quantity
        items: list[Item] = []
        if outcome == "committed":
            self.sold[hold.sku] += hold.quantity
            self.truth.totals["paid_orders"] += 1
            self.truth.totals["units_sold"] += hold.quantity
            self.truth.totals["gmv_cents"] += hold.total_cents
            lot = f"LOT-{hold.sku[-3:]}-A"
            data = {
                **base,
                "total_cents": hold.total_cents,
                "payment_ref": f"pay-{hold.order_id[:8]}",
                "allocations": [
                    {"lot_code": lot, "warehouse_id": self.warehouse_id, "quantity": hold.quantity}
                ],
            }
            items.append(
                (
                    self.topics.inventory,
                    hold.sku,
                    self._envelope("reservation.committed", data, hold.order_id),
                )
            )
            items.append(
                self.pick_requested(
                    hold.order_id, hold.sku, lot, hold.quantity, trace_code=trace_code
                )
            )
        else:
            self.available[hold.sku] += hold.quantity
            counter = "cancelled_orders" if outcome == "released" else "expired_orders"
            self.truth.totals[counter] += 1
            items.append(
                (
                    self.topics.inventory,
                    hold.sku,
                    self._envelope(f"reservation.{outcome}", base, hold.order_id),
                )
            )
        items.append(self.stock_changed(hold.sku))
        return items

    def pick_requested(
        self,
        order_id: str,
        sku: str,
        lot_code: str,
        quantity: int,
        *,
        warehouse_id: str | None = None,
        expires_on: str | None = "2030-01-15",
        trace_code: str | None = None,
    ) -> Item:
        warehouse = warehouse_id or self.warehouse_id
        data = {
            "pick_id": f"pk-{order_id}-{lot_code}",
            "order_id": order_id,
            "session_id": self.session_id,
            "sku": sku,
            "warehouse_id": warehouse,
            "lot_code": lot_code,
            "quantity": quantity,
            "expires_on": expires_on,
            "created_at": now_rfc3339(),
        }
        if trace_code is not None:
            data["trace_code"] = trace_code
        self.picks.append(data)
        return (
            self.topics.picks,
            warehouse,
            self._envelope("pick.requested", data, f"{order_id}:{lot_code}"),
        )


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    producer = create_producer(settings.replace(instance_id=f"test-{uuid.uuid4().hex[:6]}"))
    await producer.start()
    try:
        yield EventPublisher(producer, PlatformMetrics.create())
    finally:
        await producer.stop()


def snapshot_matches(snapshot: dict[str, Any], truth: Truth) -> bool:
    return snapshot["totals"] == truth.totals and snapshot["skus"] == truth.skus


async def open_session_socket(
    http: aiohttp.ClientSession, url: str, session_id: str, headers: dict[str, str]
) -> aiohttp.ClientWebSocketResponse:
    """Connect once the notifier knows the session (404 until it consumed session.updated)."""

    async def connect() -> aiohttp.ClientWebSocketResponse | None:
        try:
            return await http.ws_connect(f"{url}/v1/sessions/{session_id}/live", headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 404, exc
            return None

    return await eventually(connect, timeout=30, interval=0.1, what="session known")


@dataclass
class Frames:
    """Every frame a socket received, with its arrival time (loop clock)."""

    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.items[-1][1] if self.items else None


def collect(ws: aiohttp.ClientWebSocketResponse) -> tuple[Frames, asyncio.Task[None]]:
    frames = Frames()
    loop = asyncio.get_running_loop()

    async def read() -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                frames.items.append((loop.time(), orjson.loads(message.data)))

    return frames, asyncio.create_task(read())


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


Probe = Callable[[], Any]
