"""The one Redis pub/sub listener of a live_orders process.

It subscribes to the order-updates channel (new order states for local waiters), the stock
channel (updates the local sold-out set) and the sessions channel (drops cached session
context). Pub/sub delivers only to connected subscribers, so after any connection error
the listener subscribes again and then treats everything as changed: it wakes every
waiter (they re-read their order), refreshes the sold-out set and empties the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.common.background import cancel_requested, stop_tasks
from services.common.redis_pubsub import Subscriber, subscriber
from services.common.redis_scripts import RedisClient
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_context import OrderContextCache
from services.live_orders.order_waiters import (
    OrderWaiters,
    announcement_prefix,
    decode_updates,
)
from services.live_orders.redis_keys import RedisKeys
from services.live_orders.sold_out import SoldOutSkus

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
# get_message returns at least this often, so `alive` tracks a working connection.
READ_TIMEOUT_S = 1.0


class BroadcastListener:
    def __init__(
        self,
        *,
        redis: RedisClient,
        keys: RedisKeys,
        waiters: OrderWaiters,
        sold_out: SoldOutSkus,
        contexts: OrderContextCache,
        metrics: LiveOrdersMetrics,
        source: str,
    ) -> None:
        self._source = source
        self._own_announcements = announcement_prefix(source)
        self._contexts = contexts
        self._redis = redis
        self._keys = keys
        self._waiters = waiters
        self._sold_out = sold_out
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._last_read = 0.0

    @property
    def alive(self) -> bool:
        """Subscribed, and the connection answered within the last few seconds."""
        return (
            self._task is not None
            and not self._task.done()
            and self._subscribed.is_set()
            and time.monotonic() - self._last_read < 5 * READ_TIMEOUT_S
        )

    async def start(self) -> None:
        """Start listening; returns once subscribed, so no announcement made after the
        app is up can be missed by this process."""
        self._task = asyncio.create_task(self._run(), name="live_orders:broadcast")
        async with asyncio.timeout(10):
            await self._subscribed.wait()

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks(self._task)

    async def _run(self) -> None:
        attempt = 0
        while True:
            # In cluster mode, a plain client on one node (redis_pubsub.py says why).
            listening: Subscriber | None = None
            try:
                listening = await subscriber(self._redis, attempt)
                pubsub = listening.pubsub
                await pubsub.subscribe(
                    self._keys.order_updates_channel,
                    self._keys.stock_channel,
                    self._keys.sessions_channel,
                )
                self._last_read = time.monotonic()
                self._subscribed.set()
                if attempt:
                    # Whatever was announced while we were away is lost: re-read it all.
                    self._metrics.broadcast_reconnects.inc()
                    self._waiters.wake_all()
                    self._contexts.clear()
                    await self._sold_out.refresh()
                attempt = 0
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=READ_TIMEOUT_S
                    )
                    self._last_read = time.monotonic()
                    if message is not None and message["type"] == "message":
                        self._dispatch(message["channel"], message["data"])
            except Exception:
                if cancel_requested():
                    raise
                self._subscribed.clear()
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("pub/sub listener failed; resubscribing", exc_info=True)
                await asyncio.sleep(delay)
            finally:
                if listening is not None:
                    with contextlib.suppress(Exception):
                        await listening.aclose()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode()
        if name == self._keys.order_updates_channel:
            # This process woke its own waiters already: its announcements are not decoded.
            if not data.startswith(self._own_announcements):
                _, updates = decode_updates(data)
                self._waiters.apply(updates)
        elif name == self._keys.sessions_channel:
            self._contexts.invalidate(data.decode())
        else:
            flag, _, sku = data.decode().partition(" ")
            self._sold_out.apply_local(sku, flag == "1")
