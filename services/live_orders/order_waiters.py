"""Requests waiting for an order to change, woken through Redis pub/sub.

Each process keeps its own waiters; the process that applies a transition (whichever
consumed the inventory event) announces the order_id on the order-updates channel and every
process's listener calls `wake`. A waiter registers first and reads the order second, so a
decision that lands between the two is seen by the read, and one that lands after it sets
the event: nothing is missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from services.live_orders.domain import Order
from services.live_orders.metrics import LiveOrdersMetrics

# Belt and braces: a waiter re-reads the order this often even without a wake-up, in case
# a notification was lost while the pub/sub connection was being re-established.
SAFETY_POLL_S = 2.0


class OrderWaiters:
    def __init__(
        self, read: Callable[[str], Awaitable[Order | None]], metrics: LiveOrdersMetrics
    ) -> None:
        self._read = read
        self._metrics = metrics
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def __len__(self) -> int:
        return sum(len(events) for events in self._waiting.values())

    def wake(self, order_id: str) -> None:
        for event in self._waiting.get(order_id, ()):
            event.set()

    def wake_all(self) -> None:
        """After the listener reconnected: anything may have happened meanwhile."""
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def wait(
        self, order_id: str, done: Callable[[Order], bool], timeout_s: float
    ) -> Order | None:
        """The order once `done(order)` holds, or as it is when `timeout_s` ran out
        (None if it does not exist)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        event = asyncio.Event()
        self._waiting.setdefault(order_id, set()).add(event)
        self._metrics.waiters.inc()
        try:
            while True:
                event.clear()
                order = await self._read(order_id)
                remaining = deadline - loop.time()
                if order is None or done(order) or remaining <= 0:
                    return order
                try:
                    async with asyncio.timeout(min(remaining, SAFETY_POLL_S)):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            self._metrics.waiters.dec()
            events = self._waiting.get(order_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[order_id]
