"""Every order's creation reaches Kafka, whatever dies when.

An order id enters the outbox (a Redis sorted set, scored by time) in the same pipeline
as, and before, the placement that may create it; it leaves once the order is accounted
for: a pending order once its `order.placed` was acknowledged and the order marked
published; an order refused here (sold out, not on sale) once it was counted into a tally
(`tally_refused.lua` takes it out of the outbox and counts it in one atomic step, so
whoever gets there first counts it, exactly once). So an order that exists and was not
accounted for is always in the outbox: its request died between storing and publishing,
the broker refused the send, or the process was killed. Every live_orders process sweeps
the outbox once a second and publishes again what has been waiting longer than
`REPUBLISH_AFTER_MS` (the same deterministic event id: inventory decides an order_id
once, the notifier counts `type:order_id` once), counts the refused orders left in it,
and drops ids whose order was published meanwhile or never created (a replayed key, a
rate-limited attempt).

Refusals are not published one by one: a sold-out burst refuses thousands of attempts a
second, and an `order.rejected` each cost the broker, inventory (which only skipped it)
and the notifier a message per attempt. A tally (`attempts.tallied`: per session, how
many were refused and why) is one event per session per batch. Tallies wait in Redis (in
the outbox's slot) until their event is acknowledged; the sweep republishes the ones left
behind under the same `tally_id`, which the notifier counts once.

Two ways in: `publish_now` (a pending order: the buyer waits for inventory's decision
anyway, which cannot come before the acknowledgement, and gets a 503 if the broker does
not answer) and `tally_soon` (an order born rejected: the buyer's 409 does not wait; a
background task counts what accumulated in one batch and publishes the tallies, at once
for a lone refusal and at most once per `TALLY_GAP_S` in a burst: every tally is a Lua
call, a produce request and a fetch for each consumer of the orders topic, and ~33 a
second were ~8% of a sold-out refusal's CPU, bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Protocol

from services.common.background import cancel_requested
from services.common.clock import epoch_ms, now_rfc3339
from services.common.events import Envelope, Publisher
from services.common.messages import AttemptsTallied
from services.live_orders.domain import Order
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_events import placed_event

log = logging.getLogger(__name__)

# An order this long in the outbox is taken for orphaned: publish timeouts are 5 s by
# default, so a request still trying is usually done by then (and a duplicate is harmless).
REPUBLISH_AFTER_MS = 10_000
SWEEP_INTERVAL_S = 1.0
SWEEP_BATCH = 500
SWEEP_BATCHES_PER_RUN = 20
# The least time between two tallies of a process: a sold-out burst's refusals are
# counted in batches of this long, not of one round trip (each tally is a Lua call, a
# produce request and a fetch of every consumer of the orders topic).
TALLY_GAP_S = 0.1


class OutboxRecords(Protocol):
    """What the outbox needs of the order store (OrderStore in Redis)."""

    async def get(self, order_id: str) -> Order | None: ...

    async def mark_published(self, order_ids: Sequence[str], *, flag: bool = True) -> None: ...

    def mark_published_soon(self, order_id: str) -> None: ...

    async def release_publish_lease(self, order_id: str) -> None: ...

    async def outbox_due(self, placed_before_ms: int, limit: int) -> list[str]: ...

    async def outbox_remove(self, order_ids: Sequence[str]) -> None: ...

    async def outbox_postpone(self, order_ids: Sequence[str], now_ms: int) -> None: ...

    async def tally_refused(
        self, refused: Sequence[Order], *, tally_id: str, now_ms: int, now: str
    ) -> list[AttemptsTallied]: ...

    async def tallies_due(self, made_before_ms: int, limit: int) -> list[AttemptsTallied]: ...

    async def forget_tallies(self, tally_ids: Sequence[str]) -> None: ...


class OrderOutbox:
    def __init__(
        self,
        *,
        store: OutboxRecords,
        publisher: Publisher,
        topic: str,
        source: str,
        metrics: LiveOrdersMetrics,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self._metrics = metrics
        self._soon: list[Order] = []
        self._wake = asyncio.Event()

    async def publish_now(self, order: Order) -> None:
        """Publish and wait for the acknowledgement; raises if there is none in time (the
        order stays in the outbox, and a retry of the request may publish it at once)."""
        try:
            await self._publisher.publish(self._topic, order.sku, placed_event(order, self._source))
        except BaseException:
            await self._store.release_publish_lease(order.order_id)
            raise
        self._store.mark_published_soon(order.order_id)

    def tally_soon(self, order: Order) -> None:
        """An order refused here: counted (and its tally published) by the background task."""
        self._soon.append(order)
        self._wake.set()

    async def drain(self) -> None:
        """On shutdown: count and send what is queued (what fails stays in the outbox)."""
        orders, self._soon = self._soon, []
        if orders:
            try:
                await self._publish(orders)
            except Exception:
                log.warning("queued orders left to the outbox sweep", exc_info=True)

    async def run(self) -> None:
        """The background counter of `tally_soon` orders, and the outbox sweep."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL_S
        next_tally = loop.time()
        while True:
            try:
                async with asyncio.timeout(max(next_sweep - loop.time(), 0)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            try:
                if self._soon:
                    # A lone refusal is counted at once; a burst's gather for TALLY_GAP_S
                    # between tallies.
                    if (gap := next_tally - loop.time()) > 0:
                        await asyncio.sleep(gap)
                    next_tally = loop.time() + TALLY_GAP_S
                    self._wake.clear()
                    orders, self._soon = self._soon, []
                    await self._publish(orders)
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_INTERVAL_S
                    # A full batch means more are waiting (the broker was away for a while):
                    # keep going, a few batches at a time, rather than 500 a second.
                    for _ in range(SWEEP_BATCHES_PER_RUN):
                        examined, _ = await self._sweep_batch()
                        if examined < SWEEP_BATCH:
                            break
                    for _ in range(SWEEP_BATCHES_PER_RUN):
                        if await self.sweep_tallies() < SWEEP_BATCH:
                            break
            except Exception:
                if cancel_requested():
                    raise
                # What failed stays in the outbox: the sweep publishes it later.
                log.warning("publishing from the outbox failed", exc_info=True)

    async def sweep(self) -> int:
        """Publish what waited too long in the outbox (one batch); how many were sent."""
        return (await self._sweep_batch())[1]

    async def _sweep_batch(self) -> tuple[int, int]:
        """(ids examined, orders published)."""
        now = epoch_ms()
        ids = await self._store.outbox_due(now - REPUBLISH_AFTER_MS, SWEEP_BATCH)
        if not ids:
            return 0, 0
        orders = await asyncio.gather(*(self._store.get(order_id) for order_id in ids))
        done = [i for i, order in zip(ids, orders, strict=True) if order is None or order.published]
        todo = [order for order in orders if order is not None and not order.published]
        if done:
            await self._store.outbox_remove(done)
        if todo:
            # Push them back in time first: the other processes' sweeps leave them alone
            # while this one publishes.
            await self._store.outbox_postpone([order.order_id for order in todo], now)
            await self._publish(todo)
            self._metrics.republished_orders.inc(len(todo))
            log.info("republished orders from the outbox", extra={"orders": len(todo)})
        return len(ids), len(todo)

    async def sweep_tallies(self) -> int:
        """Publish the tallies left behind (a failed send, a killed process; one batch):
        how many were sent."""
        tallies = await self._store.tallies_due(epoch_ms() - REPUBLISH_AFTER_MS, SWEEP_BATCH)
        if tallies:
            await self._publish_tallies(tallies)
            log.info("republished tallies", extra={"tallies": len(tallies)})
        return len(tallies)

    async def _publish(self, orders: list[Order]) -> None:
        pending = [order for order in orders if order.status == "pending"]
        refused = [order for order in orders if order.status != "pending"]
        if pending:
            await self._publisher.publish_many(
                [(self._topic, order.sku, placed_event(order, self._source)) for order in pending]
            )
            await self._store.mark_published([order.order_id for order in pending])
        if refused:
            tallies = await self._store.tally_refused(
                refused, tally_id=os.urandom(8).hex(), now_ms=epoch_ms(), now=now_rfc3339()
            )
            await self._publish_tallies(tallies)

    async def _publish_tallies(self, tallies: Sequence[AttemptsTallied]) -> None:
        """Publish, then forget: a tally whose send failed stays for the sweep."""
        await self._publisher.publish_many(
            [
                (
                    self._topic,
                    tally.session_id,
                    Envelope.of(tally, source=self._source, dedup_key=tally.tally_id),
                )
                for tally in tallies
            ]
        )
        await self._store.forget_tallies([tally.tally_id for tally in tallies])
