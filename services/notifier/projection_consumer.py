"""The Kafka side of the notifier: consumed batches into the projection and the pick queue.

The consumer group (`<prefix>notifier`) reads the orders, inventory, sessions and picks
topics. The runner hands over one partition's batch at a time and commits its offset only
after this handler returned; the handler applies the whole batch in one Lua call that also
records the offset, so a batch replayed after a crash or a rebalance changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from services.common.kafka_consumer import ConsumedEvent
from services.common.kafka_topics import Topics
from services.notifier.metrics import NotifierMetrics
from services.notifier.pick_store import PickStore
from services.notifier.projection import effect_of
from services.notifier.projection_store import ProjectionStore
from services.notifier.redis_keys import NotifierKeys


def consumed_topics(topics: Topics) -> list[str]:
    return [topics.orders, topics.inventory, topics.sessions, topics.picks]


class LiveProjectionHandler:
    def __init__(
        self,
        *,
        topics: Topics,
        keys: NotifierKeys,
        projection: ProjectionStore,
        picks: PickStore,
        metrics: NotifierMetrics,
    ) -> None:
        self._topics = topics
        self._keys = keys
        self._projection = projection
        self._picks = picks
        self._metrics = metrics

    async def __call__(self, events: Sequence[ConsumedEvent]) -> None:
        if not events:
            return
        topic = events[0].topic
        topic_partition = f"{topic}:{events[0].partition}"
        if topic == self._topics.picks:
            applied, skipped = await self._picks.open_batch(
                topic_partition,
                [
                    (e.offset, e.envelope.data)
                    for e in events
                    if e.envelope.type == "pick.requested"
                ],
            )
        else:
            effects = [
                effect_of(e.envelope.type, e.envelope.data, e.offset, self._keys) for e in events
            ]
            outcome = await self._projection.apply(topic_partition, effects)
            applied, skipped = outcome.applied, outcome.skipped
        self._metrics.events_applied.labels(topic).inc(applied)
        self._metrics.events_skipped.labels(topic).inc(skipped)
        self._metrics.projection_lag.labels(topic).set(
            max(time.time() - events[-1].timestamp_ms / 1000, 0.0)
        )
