"""The consumer of `orders`: each partition batch becomes a few Lua calls and one publish.

Delivery is at-least-once (ConsumerRunner commits the offsets after this handler returns).
The scripts make that harmless: a redelivered event finds its order already decided and
answers the stored outcome, which is published again under the same event id. So the
order is: decide in Redis, publish every outcome, return (then the offsets are committed).
A crash anywhere in between replays the batch with no second effect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.clock import epoch_ms
from services.common.events import Envelope
from services.common.kafka_consumer import ConsumedEvent
from services.common.kafka_producer import EventPublisher
from services.common.kafka_topics import Topics
from services.inventory import outcomes
from services.inventory.domain import (
    Cancellation,
    HoldOutcome,
    Payment,
    PlacedOrder,
    PlaceRun,
    Step,
    StockLevels,
    plan_batch,
)
from services.inventory.metrics import InventoryMetrics
from services.inventory.stock_store import StockStore

log = logging.getLogger(__name__)

Message = tuple[str, str, Envelope]


@dataclass
class _SkuOutcome:
    sku: str
    messages: list[Message] = field(default_factory=list)
    levels: StockLevels | None = None
    holds: bool = False


class OrderEventHandler:
    """The BatchHandler of the inventory consumer group."""

    def __init__(
        self,
        *,
        store: StockStore,
        publisher: EventPublisher,
        topics: Topics,
        metrics: InventoryMetrics,
        source: str,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._topics = topics
        self._metrics = metrics
        self._source = source

    async def __call__(self, events: Sequence[ConsumedEvent]) -> None:
        plan = plan_batch(events)
        if not plan:
            return
        # Skus live in separate slots and keys: their calls may overlap. Within a sku the
        # steps run one after another, in offset order. A task group, so that when one sku
        # fails the others stop too and the retried batch never races leftovers of itself.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._apply(sku, steps)) for sku, steps in plan.items()]
        results = [task.result() for task in tasks]
        messages: list[Message] = []
        for result in results:
            messages += result.messages
            if result.levels is not None:
                # One snapshot per sku and batch, after its outcomes. Sent on replays too:
                # a crash may have lost the first one, and a snapshot is never stale news.
                messages.append(
                    (
                        self._topics.inventory,
                        result.sku,
                        outcomes.stock_changed(result.sku, result.levels, self._source),
                    )
                )
        # The sweeper must know about every sku that holds units before the offsets are
        # committed (not before the outcomes go out): both at once, one round trip less
        # before the buyers hear. On a replay this re-stamps the skus, which is harmless.
        await asyncio.gather(
            self._store.track_holds([r.sku for r in results if r.holds]),
            self._publisher.publish_many(messages),
        )

    async def _apply(self, sku: str, steps: list[Step]) -> _SkuOutcome:
        result = _SkuOutcome(sku)
        for step in steps:
            if isinstance(step, PlaceRun):
                await self._reserve(sku, step, result)
            elif isinstance(step, Payment):
                await self._commit(sku, step.event, result)
            elif isinstance(step, Cancellation):
                await self._release(sku, step.event, result)
        return result

    async def _reserve(self, sku: str, run: PlaceRun, result: _SkuOutcome) -> None:
        first = run.events[0]
        batch = await self._store.reserve_batch(
            sku,
            [PlacedOrder.from_event(e) for e in run.events],
            topic=first.topic,
            partition=first.partition,
        )
        decided_at = epoch_ms()
        self._metrics.reserve_batch_size.observe(len(run.events))
        stamps = {e.offset: e.timestamp_ms for e in run.events}
        for decision in batch.decisions:
            self._count(decision.outcome, decision.fresh, stamps[decision.offset], decided_at)
            result.messages.append(
                (
                    self._topics.inventory,
                    sku,
                    outcomes.reservation_decided(sku, decision.record, self._source),
                )
            )
            result.holds = result.holds or decision.record.state == "reserved"
        for order_id in batch.skipped:
            log.warning(
                "order.placed at an applied offset without a stored decision; left alone",
                extra={"sku": sku, "order_id": order_id},
            )
        result.levels = batch.levels

    async def _commit(self, sku: str, event: ConsumedEvent, result: _SkuOutcome) -> None:
        data = event.envelope.data
        outcome = await self._store.commit(
            sku,
            data["order_id"],
            data["payment_ref"],
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
        )
        self._publish_outcome(sku, event, outcome, result, paid=True)

    async def _release(self, sku: str, event: ConsumedEvent, result: _SkuOutcome) -> None:
        outcome = await self._store.release(
            sku,
            event.envelope.data["order_id"],
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
        )
        self._publish_outcome(sku, event, outcome, result, paid=False)

    def _publish_outcome(
        self,
        sku: str,
        event: ConsumedEvent,
        outcome: HoldOutcome,
        result: _SkuOutcome,
        *,
        paid: bool,
    ) -> None:
        record = outcome.record
        result.levels = outcome.levels
        if record is None:
            log.warning(
                "%s for an order inventory never decided; ignored",
                event.envelope.type,
                extra={"sku": sku, "order_id": event.envelope.data["order_id"]},
            )
            return
        if outcome.status == "committed" and paid:
            # A replayed payment answers the stored allocations: the same committed event
            # and the same pick tasks (same ids), never a second allocation.
            self._count("committed", outcome.fresh, event.timestamp_ms, epoch_ms())
            result.messages.append(
                (
                    self._topics.inventory,
                    sku,
                    outcomes.reservation_committed(sku, record, self._source),
                )
            )
            result.messages += [
                (
                    self._topics.picks,
                    allocation.warehouse_id,
                    outcomes.pick_requested(sku, record, allocation, self._source),
                )
                for allocation in record.allocations
            ]
        elif outcome.status == "released" and not paid:
            self._count("released", outcome.fresh, event.timestamp_ms, epoch_ms())
            released = outcomes.reservation_released(sku, record, self._source)
            result.messages.append((self._topics.inventory, sku, released))
        elif outcome.status == "expired":
            # The deadline passed before this payment or cancel (swept now or earlier):
            # the expiry is the answer, under the same id the sweeper would have used.
            self._count("expired", outcome.fresh, event.timestamp_ms, epoch_ms())
            expired = outcomes.reservation_expired(sku, record, self._source)
            result.messages.append((self._topics.inventory, sku, expired))
        else:
            # Paying a released order, cancelling a paid one, a rejected order: nothing is
            # held, nothing changes, and there is no outcome to announce.
            log.info(
                "%s left the order as it was",
                event.envelope.type,
                extra={"sku": sku, "order_id": record.order_id, "state": outcome.status},
            )

    def _count(self, outcome: str, fresh: bool, event_ms: int, decided_ms: int) -> None:
        self._metrics.decisions.labels(outcome, "false" if fresh else "true").inc()
        if fresh:
            self._metrics.decision_latency.observe(max(decided_ms - event_ms, 0) / 1000)
