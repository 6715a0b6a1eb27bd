"""Applies inventory's outcome events to the order store: the only way an order that
reached inventory changes state.

Runs in the consumer group `<topic_prefix>live_orders` on the inventory topic, so each
event is applied by one live_orders process. A partition's batch becomes one round of
Lua transitions (one pipelined round trip) and one announcement of the new states on
pub/sub, from which the waiters of every process take the order as it now is. Every step
is idempotent (the state machine refuses a repeated or stale event, stock updates carry
their version), which is what makes Kafka's at-least-once delivery and replays after a
crash harmless; a replayed batch announces its states again, which moves no waiter back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from services.common.clock import epoch_ms, now_rfc3339
from services.common.kafka_consumer import ConsumedEvent
from services.common.redis_batch import TickPipeline
from services.live_orders.domain import OUTCOME_TRANSITIONS, OrderStatus, transition_fields
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_store import OrderStore, TransitionRequest
from services.live_orders.order_waiters import OrderUpdate, OrderWaiters, encode_updates
from services.live_orders.redis_keys import RedisKeys
from services.live_orders.sold_out import SoldOutSkus

log = logging.getLogger(__name__)


class InventoryOutcomes:
    def __init__(
        self,
        *,
        orders: OrderStore,
        sold_out: SoldOutSkus,
        metrics: LiveOrdersMetrics,
        pipeline: TickPipeline,
        keys: RedisKeys,
        waiters: OrderWaiters,
        source: str,
    ) -> None:
        self._source = source
        self._waiters = waiters
        self._orders = orders
        self._sold_out = sold_out
        self._metrics = metrics
        self._pipeline = pipeline
        self._keys = keys

    async def handle(self, events: Sequence[ConsumedEvent]) -> None:
        """One partition's batch, in rounds: each round applies at most one outcome per
        order (an order's outcomes in offset order across rounds) and the newest stock
        state of each SKU."""
        stock: dict[str, ConsumedEvent] = {}
        rounds: list[list[ConsumedEvent]] = []
        seen: dict[str, int] = {}
        for event in events:
            data = event.envelope.data
            if event.envelope.type == "stock.changed":
                # Only the newest state of a SKU matters (versions order them anyway).
                stock[data["sku"]] = event
            elif event.envelope.type in OUTCOME_TRANSITIONS:
                index = seen.get(data["order_id"], 0)
                seen[data["order_id"]] = index + 1
                if index == len(rounds):
                    rounds.append([])
                rounds[index].append(event)
        # gather raises the first failure; the runner then retries the whole batch, and
        # the events already applied are no-ops the second time.
        await asyncio.gather(
            self._apply_outcomes(rounds), *(self._apply_stock(e) for e in stock.values())
        )

    async def _apply_stock(self, event: ConsumedEvent) -> None:
        data = event.envelope.data
        await self._sold_out.record(
            data["sku"],
            sold_out=data["available"] == 0,
            partition=event.partition,
            offset=event.offset,
            version=data.get("version"),
        )

    async def _apply_outcomes(self, rounds: list[list[ConsumedEvent]]) -> None:
        updates: list[OrderUpdate] = []
        for batch in rounds:
            now = now_rfc3339()
            requests = []
            for event in batch:
                kind, data = event.envelope.type, event.envelope.data
                rule = OUTCOME_TRANSITIONS[kind]
                fields = transition_fields(kind, data)
                requests.append(
                    TransitionRequest(data["order_id"], rule.target, rule.allowed_from, fields)
                )
            results = await self._orders.transition_many(requests, now=now)
            for event, request, result in zip(batch, requests, results, strict=True):
                if result.outcome in ("applied", "same"):
                    updates.append(
                        OrderUpdate(
                            request.order_id,
                            cast(OrderStatus, request.target),
                            now,
                            request.fields,
                        )
                    )
                self._count(event, result.outcome, result.previous, result.placed_ms)
        if updates:
            # This process's waiters first, at once (the states are stored); then one message
            # for the whole batch, from which every other process wakes its own.
            self._waiters.apply(updates)
            await self._pipeline.command(
                "PUBLISH", self._keys.order_updates_channel, encode_updates(updates, self._source)
            )

    def _count(self, event: ConsumedEvent, outcome: str, previous: str, placed_ms: int) -> None:
        kind, data = event.envelope.type, event.envelope.data
        if outcome != "applied":
            # A redelivery ("same"), an event overtaken by a newer state ("stale"), or an
            # order this deployment never stored ("missing"): nothing to change.
            self._metrics.ignored_outcomes.labels(kind, outcome).inc()
            if outcome == "missing":
                log.warning(
                    "outcome for an unknown order", extra={"type": kind, "order": data["order_id"]}
                )
            return
        rule = OUTCOME_TRANSITIONS[kind]
        label = f"rejected_{data['reason']}" if kind == "reservation.rejected" else rule.target
        self._metrics.outcome(label).inc()
        if previous == "pending" and placed_ms:
            self._metrics.decision_latency.observe(max(epoch_ms() - placed_ms, 0) / 1000)
