"""Expiry of unpaid holds, and the outbox that announces them.

Every inventory process runs both loops. The sweeper releases overdue holds with
expire_holds.lua, which also writes each expiry into the sku's outbox in the same atomic
step; the outbox publisher sends them to Kafka and only then removes them. A crash
between the two steps leaves the expiry in the outbox for the next drain (by any
process), so none is lost; two processes draining at once may both send one, under the
same event id, which consumers treat as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common.background import cancel_requested
from services.common.clock import epoch_ms
from services.common.events import Outgoing
from services.common.kafka_producer import EventPublisher
from services.common.kafka_topics import Topics
from services.inventory import outcome_events
from services.inventory.metrics import InventoryMetrics
from services.inventory.stock_store import StockStore

log = logging.getLogger(__name__)

# Holds released per script call: bounds how long one call blocks Redis.
SWEEP_BATCH = 500
MIN_INTERVAL_S = 0.05


class HoldSweeper:
    def __init__(
        self,
        *,
        store: StockStore,
        metrics: InventoryMetrics,
        interval_s: float,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._interval_s = max(interval_s, MIN_INTERVAL_S)
        self._batch = batch
        # Set whenever expiries were written to an outbox, to wake the publisher.
        self.released = asyncio.Event()

    async def sweep_once(self, now_ms: int | None = None) -> int:
        """Release every hold overdue at `now_ms`; returns how many this call released."""
        now = epoch_ms() if now_ms is None else now_ms
        total = 0
        outstanding = 0
        backlog = 0
        for sku, stamp in await self._store.skus_with_holds():
            released = 0
            while True:
                result = await self._store.expire_holds(sku, now_ms=now, limit=self._batch)
                released += result.released
                if result.released < self._batch:
                    break
            total += released
            outstanding += result.holds_left
            # What this sweep added is about to be published (the publisher is woken
            # below); anything older in the outbox is what publishing has not caught up on.
            backlog += max(result.outbox_len - released, 0)
            if result.holds_left == 0 and result.outbox_len == 0:
                # Nothing left to expire or announce. The stamp read before the call makes
                # this a no-op if a new hold arrived since.
                await self._store.forget_sku(sku, stamp)
        if total:
            self._metrics.sweeper_releases.inc(total)
            self.released.set()
        self._metrics.holds_outstanding.set(outstanding)
        self._metrics.expiry_backlog.set(backlog)
        return total

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                if cancel_requested():
                    raise
                log.exception("sweep failed; retrying next tick")
            await asyncio.sleep(self._interval_s)


class OutboxPublisher:
    def __init__(
        self,
        *,
        store: StockStore,
        publisher: EventPublisher,
        topics: Topics,
        source: str,
        interval_s: float,
        wake: asyncio.Event,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._topics = topics
        self._source = source
        self._interval_s = max(interval_s, MIN_INTERVAL_S)
        self._wake = wake

    async def drain_once(self) -> int:
        """Publish every pending expiry (then a stock snapshot per sku), then remove them."""
        sent = 0
        for sku, _ in await self._store.skus_with_holds():
            while records := await self._store.read_outbox(sku, SWEEP_BATCH):
                levels = await self._store.stock_levels(sku)
                topic = self._topics.inventory
                messages: list[Outgoing] = [
                    (topic, sku, outcome_events.reservation_expired(sku, r, self._source))
                    for r in records
                ]
                messages.append(
                    (topic, sku, outcome_events.stock_changed(sku, levels, self._source))
                )
                await self._publisher.publish_many(messages)
                # Only after the acknowledgement: what is removed is on every replica.
                await self._store.remove_from_outbox(sku, [r.order_id for r in records])
                sent += len(records)
        return sent

    async def run(self) -> None:
        while True:
            # Woken by the sweeper right after a release; the timeout also drains what a
            # crashed process (or a failed publish) left behind.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.drain_once()
            except Exception:
                if cancel_requested():
                    raise
                log.exception("outbox drain failed; retrying next tick")
