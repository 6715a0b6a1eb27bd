"""Applies inventory's outcome events to the order store: the only way an order that
reached inventory changes state.

Runs in the consumer group `<topic_prefix>live_orders` on the inventory topic, so each
event is applied by one live_orders process; the Lua transition announces it on pub/sub so
the waiters of every process wake. Every step is idempotent (the state machine refuses a
repeated or stale event, stock updates carry their offset), which is what makes Kafka's
at-least-once delivery and replays after a crash harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.common.clock import epoch_ms, now_rfc3339
from services.common.kafka_consumer import ConsumedEvent
from services.live_orders.domain import OUTCOME_TRANSITIONS, transition_fields
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_store import OrderStore
from services.live_orders.sold_out import SoldOutSkus

log = logging.getLogger(__name__)

# Different orders (and SKUs) of one batch are applied concurrently, up to this many.
MAX_CONCURRENCY = 32


class InventoryOutcomes:
    def __init__(
        self, orders: OrderStore, sold_out: SoldOutSkus, metrics: LiveOrdersMetrics
    ) -> None:
        self._orders = orders
        self._sold_out = sold_out
        self._metrics = metrics

    async def handle(self, events: Sequence[ConsumedEvent]) -> None:
        """One partition's batch. Events of the same order (or of the same SKU's stock)
        are applied in offset order; independent ones at the same time."""
        chains: dict[str, list[ConsumedEvent]] = {}
        for event in events:
            data = event.envelope.data
            if event.envelope.type == "stock.changed":
                chains.setdefault(f"stock:{data['sku']}", []).append(event)
            elif event.envelope.type in OUTCOME_TRANSITIONS:
                chains.setdefault(f"order:{data['order_id']}", []).append(event)
        limit = asyncio.Semaphore(MAX_CONCURRENCY)

        async def run(chain: list[ConsumedEvent]) -> None:
            async with limit:
                for event in chain:
                    await self._apply(event)

        # gather raises the first failure; the runner then retries the whole batch, and
        # the events already applied are no-ops the second time.
        await asyncio.gather(*(run(chain) for chain in chains.values()))

    async def _apply(self, event: ConsumedEvent) -> None:
        kind = event.envelope.type
        data = event.envelope.data
        if kind == "stock.changed":
            await self._sold_out.record(
                data["sku"],
                sold_out=data["available"] == 0,
                partition=event.partition,
                offset=event.offset,
                version=data.get("version"),
            )
            return
        rule = OUTCOME_TRANSITIONS[kind]
        result = await self._orders.transition(
            order_id=data["order_id"],
            target=rule.target,
            allowed_from=rule.allowed_from,
            now=now_rfc3339(),
            fields=transition_fields(kind, data),
        )
        if result.outcome != "applied":
            # A redelivery ("same"), an event overtaken by a newer state ("stale"), or an
            # order this deployment never stored ("missing"): nothing to change.
            self._metrics.ignored_outcomes.labels(kind, result.outcome).inc()
            if result.outcome == "missing":
                log.warning(
                    "outcome for an unknown order", extra={"type": kind, "order": data["order_id"]}
                )
            return
        outcome = f"rejected_{data['reason']}" if kind == "reservation.rejected" else rule.target
        self._metrics.order_outcomes.labels(outcome).inc()
        if result.previous == "pending" and result.placed_ms:
            self._metrics.decision_latency.observe(max(epoch_ms() - result.placed_ms, 0) / 1000)
