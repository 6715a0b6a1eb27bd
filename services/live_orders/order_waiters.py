"""Requests waiting for an order to change, and the announcements that wake them.

Each process keeps its own waiters. The process that applies a batch of inventory
outcomes (whichever consumed it) announces the new states in one message on the
order-updates channel (`encode_updates`); every process's listener hands them to `apply`,
and a waiter moves its copy of the order forward without reading Redis again. A waiter
registers (`watch`) before its request publishes anything and reads the order (or takes
the one it just stored) after registering, so an outcome applied between the two is
seen by the read and one applied after it arrives as an update: nothing is missed.
Updates only ever move an order forward in the state machine, so an announcement that
overtook a read, or a replayed batch's, never moves it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import orjson

from services.common.kafka_consumer import LONG_HOLD_MS, SHORT_HOLD_MS
from services.common.values import value_class
from services.live_orders.domain import Order, OrderStatus
from services.live_orders.metrics import LiveOrdersMetrics

# Belt and braces: a waiter re-reads the order this often even without an update, in case
# an announcement was lost (pub/sub reconnecting, or a consumer died before announcing).
SAFETY_POLL_S = 2.0

STATUS_RANK: dict[str, int] = {
    "pending": 0,
    "reserved": 1,
    "rejected": 2,
    "paid": 2,
    "cancelled": 2,
    "expired": 2,
}

# live_orders' consumer holds its fetches (kafka_consumer's batch mode) while at least
# CROWD_HOLD requests of the process wait for a decision, and fetches at once again below
# CROWD_RELEASE: the number waiting is the load's concurrency (rate x latency), which does
# not move with the machine's speed as the event rate does. Its events per order do move
# (~1.9 at 8 connections, ~1.05 at 64: stock snapshots come per decided batch), so no event
# rate told the two loads apart. With a few buyers the 2 ms hold was ~1.5 ms of every
# answer's p50; with many their outcomes come in the same fetches, which saves CPU. From
# THRONG_HOLD waiting (back below THRONG_RELEASE) the hold is the long one
# (kafka_consumer.LONG_HOLD_MS): at 64 connections 56-64 wait and each queues ~20 ms for
# the cores, while at 24 the long hold cost ~1 ms of the p50 and 8% of the orders/s
# (bench/RESULTS.md). A flood of outcomes nobody waits for (expiries) is held long by its
# rate.
CROWD_HOLD = 24
CROWD_RELEASE = 12
THRONG_HOLD = 40
THRONG_RELEASE = 32
FLOOD_RATE = 5_000

# The order fields an outcome may set besides status and updated_at (domain.transition_fields;
# OrderUpdate.applied_to takes these three and no other).
UPDATABLE_FIELDS = frozenset({"expires_at", "reason", "payment_ref"})


@value_class
class OrderUpdate:
    order_id: str
    status: OrderStatus
    updated_at: str
    fields: dict[str, str]

    def applied_to(self, order: Order) -> Order:
        """`order` moved to this state; unchanged if it is there or further already."""
        if STATUS_RANK[self.status] <= STATUS_RANK[order.status]:
            return order
        # Built field by field: dataclasses.replace took twice as long (once per order).
        fields = self.fields
        return Order(
            order_id=order.order_id,
            status=self.status,
            session_id=order.session_id,
            sku=order.sku,
            buyer_id=order.buyer_id,
            quantity=order.quantity,
            unit_price_cents=order.unit_price_cents,
            total_cents=order.total_cents,
            per_user_limit=order.per_user_limit,
            placed_at=order.placed_at,
            placed_ms=order.placed_ms,
            updated_at=self.updated_at,
            expires_at=fields.get("expires_at", order.expires_at),
            reason=fields.get("reason", order.reason),
            payment_ref=fields.get("payment_ref", order.payment_ref),
            intent=order.intent,
            published=True,
        )


def encode_updates(updates: Sequence[OrderUpdate], source: str) -> bytes:
    """The announcement of a batch of new states, naming the process that applied them."""
    return orjson.dumps([source, [[u.order_id, u.status, u.updated_at, u.fields] for u in updates]])


def announcement_prefix(source: str) -> bytes:
    """What every announcement `source` made starts with: a process passes over its own
    ones without decoding them (it woke its waiters before announcing)."""
    return orjson.dumps([source, []])[: -len(b"[]]")]


def decode_updates(raw: bytes) -> tuple[str, list[OrderUpdate]]:
    """(the announcing process, its updates)."""
    source, items = orjson.loads(raw)
    return source, [OrderUpdate(*item) for item in items]


class Watch:
    """One waiting request's view of one order: the updates pushed since it last looked,
    and whether it must read the order again (`stale`)."""

    __slots__ = ("_wakeup", "stale", "updates")

    def __init__(self) -> None:
        self.updates: list[OrderUpdate] = []
        self.stale = False
        # The future `sleep` awaits, while it does.
        self._wakeup: asyncio.Future[bool] | None = None

    def push(self, update: OrderUpdate) -> None:
        self.updates.append(update)
        self._wake()

    def invalidate(self) -> None:
        self.stale = True
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(True)

    async def sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> bool:
        """Until a push or an invalidation (True) or `seconds` passed (False). A bare
        future and one timer: an Event under asyncio.timeout cost three times as much,
        once per decided order."""
        wakeup: asyncio.Future[bool] = loop.create_future()
        self._wakeup = wakeup
        timer = loop.call_later(seconds, _time_up, wakeup)
        try:
            return await wakeup
        finally:
            timer.cancel()
            self._wakeup = None


def _time_up(wakeup: asyncio.Future[bool]) -> None:
    if not wakeup.done():
        wakeup.set_result(False)


class OrderWaiters:
    def __init__(
        self, read: Callable[[str], Awaitable[Order | None]], metrics: LiveOrdersMetrics
    ) -> None:
        self._read = read
        self._metrics = metrics
        self._waiting: dict[str, list[Watch]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def hold_fetches(self, rate: float, hold_ms: int) -> int:
        """The fetch policy of live_orders' consumer (kafka_consumer.FetchPolicy): the
        short hold while crowded (CROWD_HOLD), the long one in a throng (THRONG_HOLD) or a
        flood; none for a few."""
        crowd = self._count
        if (
            rate >= FLOOD_RATE
            or crowd >= THRONG_HOLD
            or (hold_ms >= LONG_HOLD_MS and crowd >= THRONG_RELEASE)
        ):
            return LONG_HOLD_MS
        if crowd >= CROWD_HOLD or (hold_ms > 0 and crowd >= CROWD_RELEASE):
            return SHORT_HOLD_MS
        return 0

    def apply(self, updates: Sequence[OrderUpdate]) -> None:
        for update in updates:
            for watch in self._waiting.get(update.order_id, ()):
                watch.push(update)

    def wake_all(self) -> None:
        """After the listener reconnected: anything may have happened meanwhile."""
        for watches in self._waiting.values():
            for watch in watches:
                watch.invalidate()

    @contextmanager
    def watch(self, order_id: str) -> Iterator[Watch]:
        watch = Watch()
        self._waiting.setdefault(order_id, []).append(watch)
        self._count += 1
        self._metrics.waiters.inc()
        try:
            yield watch
        finally:
            self._count -= 1
            self._metrics.waiters.dec()
            watches = self._waiting.get(order_id)
            if watches is not None:
                watches.remove(watch)
                if not watches:
                    del self._waiting[order_id]

    async def until(
        self,
        watch: Watch,
        order_id: str,
        done: Callable[[Order], bool],
        timeout_s: float,
        current: Order | None = None,
    ) -> Order | None:
        """The order once `done(order)` holds, or as it is when `timeout_s` ran out (None
        if it does not exist). `current` is the order as read or stored after `watch`
        was registered; without it the order is read first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        order = current if current is not None else await self._read(order_id)
        while True:
            if watch.stale:
                watch.stale = False
                watch.updates.clear()
                order = await self._read(order_id)
            if order is not None:
                for update in watch.updates:
                    order = update.applied_to(order)
            watch.updates.clear()
            remaining = deadline - loop.time()
            if order is None or done(order) or remaining <= 0:
                return order
            if watch.stale:
                continue  # invalidated while the order was being read
            woke = await watch.sleep(loop, min(remaining, SAFETY_POLL_S))
            if not woke and loop.time() < deadline:
                watch.stale = True

    async def wait(
        self, order_id: str, done: Callable[[Order], bool], timeout_s: float
    ) -> Order | None:
        """Register, read, wait: for a request that has nothing to publish first."""
        with self.watch(order_id) as watch:
            return await self.until(watch, order_id, done, timeout_s)
