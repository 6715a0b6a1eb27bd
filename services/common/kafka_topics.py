"""Topic names and their idempotent provisioning."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common.settings import Settings
from services.common.transport_security import kafka_security_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    orders: str
    inventory: str
    picks: str
    sessions: str
    dlq: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(
            orders=f"{prefix}orders",
            inventory=f"{prefix}inventory",
            picks=f"{prefix}picks",
            sessions=f"{prefix}sessions",
            dlq=f"{prefix}dlq",
        )

    def all(self) -> tuple[str, ...]:
        return (self.orders, self.inventory, self.picks, self.sessions, self.dlq)


def min_insync_replicas(settings: Settings) -> int | None:
    """LC_KAFKA_MIN_INSYNC_REPLICAS, else 2 once topics are replicated (production: an
    acknowledged write, acks=all, survives the loss of one broker); None: broker default."""
    if settings.kafka_min_insync_replicas:
        return settings.kafka_min_insync_replicas
    return 2 if settings.topic_replication_factor > 1 else None


def topic_specs(settings: Settings) -> list[NewTopic]:
    topics = Topics.with_prefix(settings.topic_prefix)
    # segment.ms bounds how long past retention.ms a record stays readable (a segment is
    # deleted whole): Settings.replay_window_ms, how long dedup entries are kept, counts on it.
    retention = {
        "retention.ms": str(settings.topic_retention_ms),
        "segment.ms": str(settings.segment_ms),
    }
    replicated: dict[str, str] = {}
    min_isr = min_insync_replicas(settings)
    if min_isr is not None:
        replicated["min.insync.replicas"] = str(min_isr)
    retention.update(replicated)
    specs = [
        NewTopic(
            name,
            settings.topic_partitions,
            settings.topic_replication_factor,
            topic_configs=dict(retention),
        )
        for name in (topics.orders, topics.inventory, topics.picks, topics.dlq)
    ]
    # Sessions are state, not history: compaction keeps the latest version of each session.
    compacted = {"cleanup.policy": "compact", **replicated}
    specs.append(
        NewTopic(
            topics.sessions,
            settings.topic_partitions,
            settings.topic_replication_factor,
            topic_configs=compacted,
        )
    )
    return specs


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; returns the names it created. Safe to run concurrently
    from every service: a topic another process created first is simply left alone."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.instance_id}-admin",
        **kafka_security_kwargs(settings),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        created = []
        for name, code, *_ in getattr(response, "topic_errors", []):
            if code == 0:
                created.append(name)
            elif code != 36:  # 36: TOPIC_ALREADY_EXISTS, a concurrent creator won
                raise RuntimeError(f"creating topic {name} failed with Kafka error {code}")
        log.info("topics created", extra={"topics": created})
        return created
    finally:
        await admin.close()
