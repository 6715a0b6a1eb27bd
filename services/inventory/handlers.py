"""The handlers of inventory's consumer group (`orders` and `picks` topics), one per
message class.

Delivery is at-least-once (ConsumerRunner commits the offsets after `__call__` returns).
The scripts make that harmless: a redelivered event finds its order already decided and
answers the stored outcome, which is published again under the same event id. So the
order is: decide in Redis, publish every outcome, return (then the offsets are committed).
A crash anywhere in between replays the batch with no second effect.

A partition's batch is cut per sku into runs of consecutive events of one class: skus are
independent (own keys, own slot), so they run concurrently; within a sku the runs keep
their offset order, because a payment must see the hold its order.placed made. A run of
order.placed is one reserve_batch call.

Lot journals (lot_journal, DESIGN 4.6) grow here too: a payment appends `lot.allocated` to
every lot it took units of, a pick.completed (from the notifier, on the picks topic)
appends `lot.picked`; each append is announced by a lot.updated. Appends are idempotent
by their dedup key (order_id, pick_id), so a replayed batch appends nothing again and only
re-announces the lots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, cast

from services.common.background import run_concurrently
from services.common.clock import epoch_ms, ms_to_rfc3339
from services.common.consumed import ConsumedEvent
from services.common.events import Outgoing, Publisher
from services.common.kafka_topics import Topics
from services.common.messages import (
    Message,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    PickCompleted,
)
from services.common.values import value_class
from services.inventory import outcome_events
from services.inventory.domain import (
    Allocation,
    HoldOutcome,
    HoldStatus,
    OrderRecord,
    PlacedOrder,
    ReserveBatchResult,
    StockLevels,
    trace_code,
)
from services.inventory.lot_journal import (
    EntryType,
    JournalAppend,
    allocated_data,
    picked_data,
)
from services.inventory.metrics import InventoryMetrics

log = logging.getLogger(__name__)


class StockLedger(Protocol):
    """What the handlers need of the stock store (StockStore in Redis)."""

    async def reserve_batch(
        self, sku: str, orders: Sequence[PlacedOrder], *, topic: str, partition: int
    ) -> ReserveBatchResult: ...

    async def commit(
        self, sku: str, order_id: str, payment_ref: str, *, topic: str, partition: int, offset: int
    ) -> HoldOutcome: ...

    async def release(
        self, sku: str, order_id: str, *, topic: str, partition: int, offset: int
    ) -> HoldOutcome: ...

    async def track_holds(self, skus: Sequence[str]) -> None: ...

    async def track_retention(self, skus: Sequence[str]) -> None: ...


class LotJournals(Protocol):
    """What the handlers need of the lot journals (JournalStore in Redis)."""

    async def append(
        self,
        sku: str,
        lot_code: str,
        type_: EntryType,
        *,
        at: str,
        data: dict[str, Any],
        dedup_key: str,
    ) -> JournalAppend | None: ...


@dataclass
class SkuOutcome:
    """What one sku's runs of a batch produced: events to publish, the stock after them."""

    sku: str
    messages: list[Outgoing] = field(default_factory=list)
    levels: StockLevels | None = None
    holds: bool = False


# A handler takes a run of consecutive events of its class for one sku.
RunHandler = Callable[[str, Sequence[ConsumedEvent[Any]], SkuOutcome], Awaitable[None]]


@value_class
class Run:
    handler: RunHandler
    events: list[ConsumedEvent[Any]]


def plan_runs(
    events: Sequence[ConsumedEvent[Message]], table: dict[type[Message], RunHandler]
) -> dict[str, list[Run]]:
    """Per sku, its events cut into runs of one handler, in offset order. Events of classes
    the table does not list are left out, which lets the runs around them join."""
    plan: dict[str, list[Run]] = {}
    for event in events:
        handler = table.get(type(event.message))
        if handler is None:
            continue
        # Every listed class names its sku: order events and pick.completed alike.
        sku = cast(OrderPlaced | OrderPaid | OrderCancelled | PickCompleted, event.message).sku
        runs = plan.setdefault(sku, [])
        if runs and runs[-1].handler == handler:
            runs[-1].events.append(event)
        else:
            runs.append(Run(handler, [event]))
    return plan


class _Position(TypedDict):
    topic: str
    partition: int
    offset: int


def _position(event: ConsumedEvent[Message]) -> _Position:
    """Where the event sits in the log: the scripts record it, so a replay applies nothing."""
    return {"topic": event.topic, "partition": event.partition, "offset": event.offset}


class EventHandlers:
    """The BatchHandler of the inventory consumer group."""

    def __init__(
        self,
        *,
        store: StockLedger,
        journals: LotJournals,
        publisher: Publisher,
        topics: Topics,
        metrics: InventoryMetrics,
        source: str,
        trace_key: bytes,
    ) -> None:
        self._store = store
        self._journals = journals
        self._trace_key = trace_key
        self._publisher = publisher
        self._topics = topics
        self._metrics = metrics
        self._source = source
        self.table: dict[type[Message], RunHandler] = {
            OrderPlaced: self.reserve,
            OrderPaid: self.commit,
            OrderCancelled: self.release,
            PickCompleted: self.journal_pick,
        }

    @property
    def handles(self) -> frozenset[type[Message]]:
        """attempts.tallied and order.rejected (orders topic) were refused before they
        got here; pick.requested (picks topic) is inventory's own."""
        return frozenset(self.table)

    async def __call__(self, events: Sequence[ConsumedEvent[Message]]) -> None:
        plan = plan_runs(events, self.table)
        if not plan:
            return
        # When one sku fails the others stop too, so the retried batch never races
        # leftovers of itself (run_concurrently says why not asyncio.TaskGroup).
        results = await run_concurrently(*(self._apply(sku, runs) for sku, runs in plan.items()))
        messages: list[Outgoing] = []
        for result in results:
            messages += result.messages
            if result.levels is not None:
                # One snapshot per sku and batch, after its outcomes. Sent on replays too:
                # a crash may have lost the first one, and a snapshot is never stale news.
                snapshot = outcome_events.stock_changed(result.sku, result.levels, self._source)
                messages.append((self._topics.inventory, result.sku, snapshot))
        # The sweeper must know about every sku that holds units before the offsets are
        # committed (not before the outcomes go out): both at once, one round trip less
        # before the buyers hear. On a replay this re-stamps the skus, which is harmless.
        # Every sku of the batch may now have decisions or journal keys to drop some day.
        await asyncio.gather(
            self._store.track_holds([r.sku for r in results if r.holds]),
            self._store.track_retention([r.sku for r in results]),
            self._publisher.publish_many(messages),
        )

    async def _apply(self, sku: str, runs: list[Run]) -> SkuOutcome:
        result = SkuOutcome(sku)
        for run in runs:
            await run.handler(sku, run.events, result)
        return result

    # -- one handler per message class

    async def reserve(
        self, sku: str, events: Sequence[ConsumedEvent[OrderPlaced]], result: SkuOutcome
    ) -> None:
        """order.placed: one reserve_batch call decides the run."""
        first = events[0]
        batch = await self._store.reserve_batch(
            sku,
            [PlacedOrder.from_message(e.offset, e.message) for e in events],
            topic=first.topic,
            partition=first.partition,
        )
        decided_at = epoch_ms()
        self._metrics.reserve_batch_size.observe(len(events))
        stamps = {e.offset: e.timestamp_ms for e in events}
        for decision in batch.decisions:
            self._count(decision.outcome, decision.fresh, stamps[decision.offset], decided_at)
            decided = outcome_events.reservation_decided(sku, decision.record, self._source)
            result.messages.append((self._topics.inventory, sku, decided))
            result.holds = result.holds or decision.record.state == "reserved"
        for order_id in batch.skipped:
            log.warning(
                "order.placed at an applied offset without a stored decision; left alone",
                extra={"sku": sku, "order_id": order_id},
            )
        result.levels = batch.levels

    async def commit(
        self, sku: str, events: Sequence[ConsumedEvent[OrderPaid]], result: SkuOutcome
    ) -> None:
        """order.paid: the hold becomes sold, allocated to lots, and picks are requested.
        A replayed payment answers the stored allocations: the same committed event and
        the same pick tasks (same ids), never a second allocation."""
        for event in events:
            paid = event.message
            outcome = await self._store.commit(
                sku, paid.order_id, paid.payment_ref, **_position(event)
            )
            record = self._hold_ended(sku, event, outcome, "committed", result)
            if record is None:
                continue
            # Journal the allocation before anything is published: a crash in between
            # replays the batch, commit answers the stored record, and the append finds
            # its order_id known and adds nothing (a journal written after the publish
            # could miss an allocation the buyers were already told about).
            appended = await asyncio.gather(
                *(self._journal_allocation(sku, record, a) for a in record.allocations)
            )
            committed = outcome_events.reservation_committed(sku, record, self._source)
            result.messages.append((self._topics.inventory, sku, committed))
            result.messages += [
                (
                    self._topics.picks,
                    allocation.warehouse_id,
                    outcome_events.pick_requested(
                        sku, record, allocation, self._source, trace_key=self._trace_key
                    ),
                )
                for allocation in record.allocations
            ]
            self._announce_lots(sku, appended, result)

    async def release(
        self, sku: str, events: Sequence[ConsumedEvent[OrderCancelled]], result: SkuOutcome
    ) -> None:
        """order.cancelled: the held units go back to the pool."""
        for event in events:
            outcome = await self._store.release(sku, event.message.order_id, **_position(event))
            record = self._hold_ended(sku, event, outcome, "released", result)
            if record is not None:
                released = outcome_events.reservation_released(sku, record, self._source)
                result.messages.append((self._topics.inventory, sku, released))

    async def journal_pick(
        self, sku: str, events: Sequence[ConsumedEvent[PickCompleted]], result: SkuOutcome
    ) -> None:
        """pick.completed: `lot.picked` in the lot's journal, once per pick_id (the
        notifier publishes a completion once, but Kafka may deliver it twice)."""
        for event in events:
            done = event.message
            code = done.trace_code or trace_code(self._trace_key, done.pick_id)
            data = picked_data(
                pick_id=done.pick_id,
                trace_code=code,
                quantity=done.quantity,
                completed_at=done.completed_at,
                completed_by=done.completed_by,
            )
            appended = await self._append(
                sku,
                done.lot_code,
                "lot.picked",
                at=done.completed_at,
                data=data,
                dedup_key=done.pick_id,
            )
            self._announce_lots(sku, [appended], result)

    async def _journal_allocation(
        self, sku: str, record: OrderRecord, allocation: Allocation
    ) -> JournalAppend | None:
        task_id = outcome_events.pick_id(record.order_id, allocation.lot_code)
        data = allocated_data(
            order_id=record.order_id,
            session_id=record.session_id,
            quantity=allocation.quantity,
            pick_id=task_id,
            trace_code=trace_code(self._trace_key, task_id),
        )
        # `at` is the commit time stored with the order: a replay computes the same entry.
        at = ms_to_rfc3339(record.committed_ms or 0)
        return await self._append(
            sku, allocation.lot_code, "lot.allocated", at=at, data=data, dedup_key=record.order_id
        )

    async def _append(
        self,
        sku: str,
        lot_code: str,
        type_: EntryType,
        *,
        at: str,
        data: dict[str, Any],
        dedup_key: str,
    ) -> JournalAppend | None:
        appended = await self._journals.append(
            sku, lot_code, type_, at=at, data=data, dedup_key=dedup_key
        )
        if appended is None:
            log.warning(
                "%s for a lot inventory does not have; not journaled",
                type_,
                extra={"sku": sku, "lot_code": lot_code, "dedup_key": dedup_key},
            )
        return appended

    def _announce_lots(
        self, sku: str, appended: Sequence[JournalAppend | None], result: SkuOutcome
    ) -> None:
        """A lot.updated per lot whose journal was appended to, or already held the entry
        (a replay: the first announcement may have been lost with the crash)."""
        for done in appended:
            if done is not None:
                updated = outcome_events.lot_updated(sku, done.lot, done.head, self._source)
                result.messages.append((self._topics.inventory, sku, updated))

    def _hold_ended(
        self,
        sku: str,
        event: ConsumedEvent[OrderPaid | OrderCancelled],
        outcome: HoldOutcome,
        goal: HoldStatus,
        result: SkuOutcome,
    ) -> OrderRecord | None:
        """What a payment and a cancellation share: the stock after them, and when the
        deadline had passed first (swept now or earlier), the expiry as the answer, under
        the id the sweeper would have used. The record when the hold reached `goal`."""
        result.levels = outcome.levels
        record = outcome.record
        if record is None or outcome.status not in (goal, "expired"):
            self._left_alone(event, outcome)
            return None
        self._count(outcome.status, outcome.fresh, event.timestamp_ms, epoch_ms())
        if outcome.status == "expired":
            expired = outcome_events.reservation_expired(sku, record, self._source)
            result.messages.append((self._topics.inventory, sku, expired))
            return None
        return record

    def _left_alone(
        self, event: ConsumedEvent[OrderPaid | OrderCancelled], outcome: HoldOutcome
    ) -> None:
        """Paying a released order, cancelling a paid one, a rejected order, an order
        inventory never decided: nothing is held, nothing changes, nothing to announce."""
        message = event.message
        if outcome.record is None:
            log.warning(
                "%s for an order inventory never decided; ignored",
                message.TYPE,
                extra={"sku": message.sku, "order_id": message.order_id},
            )
        else:
            log.info(
                "%s left the order as it was",
                message.TYPE,
                extra={"sku": message.sku, "order_id": message.order_id, "state": outcome.status},
            )

    def _count(self, outcome: str, fresh: bool, event_ms: int, decided_ms: int) -> None:
        self._metrics.decision(outcome, "false" if fresh else "true").inc()
        if fresh:
            self._metrics.decision_latency.observe(max(decided_ms - event_ms, 0) / 1000)
