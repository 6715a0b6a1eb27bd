"""The handlers of the notifier's consumer group, one per message class: events into the
live projection (the host's counters, stock, sessions) and into the pick queue.

The consumer group (`<prefix>notifier`) reads the orders, inventory, sessions and picks
topics. The runner hands over one partition's batch at a time and commits its offset only
after this handler returned; the batch's effects are applied in one Lua call that also
records the offset, so a batch replayed after a crash or a rebalance changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from services.common.consumed import ConsumedEvent, HandlerTable, dispatch
from services.common.kafka_topics import Topics
from services.common.messages import Message, PickRequested
from services.notifier.metrics import NotifierMetrics
from services.notifier.projection import EFFECTS, Applied, EventEffect, effect_of
from services.notifier.redis_keys import NotifierKeys


def consumed_topics(topics: Topics) -> list[str]:
    return [topics.orders, topics.inventory, topics.sessions, topics.picks]


class Projection(Protocol):
    """What the handlers need of the projection store (ProjectionStore in Redis)."""

    async def apply(self, topic_partition: str, effects: Sequence[EventEffect]) -> Applied: ...


class PickQueue(Protocol):
    """What the handlers need of the pick store (PickStore in Redis)."""

    async def open_batch(
        self, topic_partition: str, picks: Sequence[tuple[int, PickRequested]]
    ) -> tuple[int, int]: ...


class EventHandlers:
    """The BatchHandler of the notifier consumer group."""

    def __init__(
        self,
        *,
        keys: NotifierKeys,
        projection: Projection,
        picks: PickQueue,
        metrics: NotifierMetrics,
    ) -> None:
        self._keys = keys
        self._projection = projection
        self._picks = picks
        self._metrics = metrics
        self.table: HandlerTable = {
            **{projected: self.project for projected in EFFECTS},
            PickRequested: self.open_picks,
        }

    @property
    def handles(self) -> frozenset[type[Message]]:
        return frozenset(self.table)

    async def __call__(self, events: Sequence[ConsumedEvent[Message]]) -> None:
        await dispatch(events, self.table)

    async def project(self, events: Sequence[ConsumedEvent[Message]]) -> None:
        """Order events, stock snapshots, sessions: their effects, in one atomic step."""
        effects = [effect_of(e.message, e.offset, self._keys) for e in events]
        applied = await self._projection.apply(_topic_partition(events), effects)
        self._count(events, applied.applied, applied.skipped)

    async def open_picks(self, events: Sequence[ConsumedEvent[PickRequested]]) -> None:
        """pick.requested: a task in its warehouse's queue, once."""
        opened, skipped = await self._picks.open_batch(
            _topic_partition(events), [(e.offset, e.message) for e in events]
        )
        self._count(events, opened, skipped)

    def _count(self, events: Sequence[ConsumedEvent[Message]], applied: int, skipped: int) -> None:
        topic = events[0].topic
        self._metrics.events_applied.labels(topic).inc(applied)
        self._metrics.events_skipped.labels(topic).inc(skipped)
        self._metrics.projection_lag.labels(topic).set(
            max(time.time() - events[-1].timestamp_ms / 1000, 0.0)
        )


def _topic_partition(events: Sequence[ConsumedEvent[Message]]) -> str:
    return f"{events[0].topic}:{events[0].partition}"
