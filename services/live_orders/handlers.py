"""The handlers of live_orders' consumer group (`inventory` topic), one per message class:
inventory's outcomes move orders (the only way an order that reached inventory changes
state), stock snapshots feed the sold-out fast path.

Runs in the consumer group `<topic_prefix>live_orders`, so each event is applied by one
live_orders process. A partition's outcomes become one Lua call (`transition_orders.lua`;
on a cluster one per slot, in one round trip) and one announcement of the new states on
pub/sub, from which the waiters of every process take the order as it now is. Every
step is idempotent (the state machine refuses a repeated or stale event, stock updates
carry their version), which is what makes Kafka's at-least-once delivery and replays
after a crash harmless; a replayed batch announces its states again, which moves no
waiter back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from services.common.clock import epoch_ms, now_rfc3339
from services.common.consumed import ConsumedEvent, HandlerTable, dispatch
from services.common.messages import Message, OrderOutcome, StockChanged
from services.live_orders.domain import (
    OUTCOME_TRANSITIONS,
    TransitionRequest,
    TransitionResult,
    outcome_label,
    transition_fields,
)
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_waiters import OrderUpdate, OrderWaiters

log = logging.getLogger(__name__)


class OrderTransitions(Protocol):
    """What the handlers need of the order store (OrderStore in Redis)."""

    async def transition_many(
        self, requests: Sequence[TransitionRequest], *, now: str
    ) -> list[TransitionResult]: ...

    def announce(self, updates: Sequence[OrderUpdate], source: str) -> None: ...


class SoldOutRecord(Protocol):
    """What the handlers need of the sold-out set (SoldOutSkus in Redis)."""

    async def record(
        self, sku: str, *, sold_out: bool, partition: int, offset: int, version: int | None
    ) -> bool: ...


class EventHandlers:
    """The BatchHandler of the live_orders consumer group."""

    def __init__(
        self,
        *,
        orders: OrderTransitions,
        sold_out: SoldOutRecord,
        waiters: OrderWaiters,
        metrics: LiveOrdersMetrics,
        source: str,
    ) -> None:
        self._orders = orders
        self._sold_out = sold_out
        self._waiters = waiters
        self._metrics = metrics
        self._source = source
        self.table: HandlerTable = {
            **{outcome: self.apply_outcomes for outcome in OUTCOME_TRANSITIONS},
            StockChanged: self.record_stock,
        }

    @property
    def handles(self) -> frozenset[type[Message]]:
        return frozenset(self.table)

    async def __call__(self, events: Sequence[ConsumedEvent[Message]]) -> None:
        """Outcomes and stock snapshots touch different keys: their handlers run at once."""
        await dispatch(events, self.table)

    async def record_stock(self, events: Sequence[ConsumedEvent[StockChanged]]) -> None:
        """stock.changed: only the newest state of a SKU matters. Several inventory
        processes publish snapshots, so a partition may hold an older one after a newer
        one: the highest version is the newest (an unversioned one, from before versions
        existed, counts as newest by its offset)."""
        newest: dict[str, ConsumedEvent[StockChanged]] = {}
        for event in events:
            kept = newest.get(event.message.sku)
            if kept is None or not _older(event.message, kept.message):
                newest[event.message.sku] = event
        await asyncio.gather(
            *(
                self._sold_out.record(
                    sku,
                    sold_out=event.message.available == 0,
                    partition=event.partition,
                    offset=event.offset,
                    version=event.message.version,
                )
                for sku, event in newest.items()
            )
        )

    async def apply_outcomes(self, events: Sequence[ConsumedEvent[OrderOutcome]]) -> None:
        """reservation.*: in rounds, each applying at most one outcome per order (an
        order's outcomes in offset order across rounds); then the new states are told."""
        updates: list[OrderUpdate] = []
        for batch in _rounds(events):
            now = now_rfc3339()
            requests = [_transition_request(event.message) for event in batch]
            results = await self._orders.transition_many(requests, now=now)
            for event, request, result in zip(batch, requests, results, strict=True):
                if result.outcome in ("applied", "same"):
                    target = OUTCOME_TRANSITIONS[type(event.message)].target
                    updates.append(OrderUpdate(request.order_id, target, now, request.fields))
                self._count(event.message, result)
        if updates:
            # This process's waiters first, at once (the states are stored); then one message
            # for the whole batch, from which every other process wakes its own.
            self._waiters.apply(updates)
            self._orders.announce(updates, self._source)

    def _count(self, outcome: OrderOutcome, result: TransitionResult) -> None:
        if result.outcome != "applied":
            # A redelivery ("same"), an event overtaken by a newer state ("stale"), or an
            # order this deployment never stored ("missing"): nothing to change.
            self._metrics.ignored_outcomes.labels(outcome.TYPE, result.outcome).inc()
            if result.outcome == "missing":
                log.warning(
                    "outcome for an unknown order",
                    extra={"type": outcome.TYPE, "order": outcome.order_id},
                )
            return
        self._metrics.outcome(outcome_label(outcome)).inc()
        if result.previous == "pending" and result.placed_ms:
            self._metrics.decision_latency.observe(max(epoch_ms() - result.placed_ms, 0) / 1000)


def _older(snapshot: StockChanged, than: StockChanged) -> bool:
    if snapshot.version is None or than.version is None:
        return False
    return snapshot.version < than.version


def _transition_request(outcome: OrderOutcome) -> TransitionRequest:
    rule = OUTCOME_TRANSITIONS[type(outcome)]
    return TransitionRequest(
        outcome.order_id, rule.target, rule.allowed_from, transition_fields(outcome)
    )


def _rounds(
    events: Sequence[ConsumedEvent[OrderOutcome]],
) -> list[list[ConsumedEvent[OrderOutcome]]]:
    """The events cut so that no round holds two outcomes of one order."""
    rounds: list[list[ConsumedEvent[OrderOutcome]]] = []
    seen: dict[str, int] = {}
    for event in events:
        order_id = event.message.order_id
        index = seen.get(order_id, 0)
        seen[order_id] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(event)
    return rounds
