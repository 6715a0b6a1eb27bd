"""lc_consumer_lag is reported by a partition's current owner only: a member that gives a
partition up drops its series, or the group's summed lag (the LcConsumerLag* alerts, the
dashboard) would keep the value it had when the partition moved."""

from __future__ import annotations

from aiokafka import TopicPartition

from services.common.kafka_consumer import ConsumerRunner, _Rebalance
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings


def lag_by_partition(metrics: PlatformMetrics) -> dict[str, float]:
    return {
        sample.labels["partition"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "lc_consumer_lag"
        for sample in family.samples
    }


async def test_revoked_partitions_leave_the_lag_gauge() -> None:
    metrics = PlatformMetrics.create()
    runner = ConsumerRunner(
        settings=Settings(service="inventory", jwt_secret="s" * 32),
        group="lc.inventory",
        topics=["lc.orders"],
        handler=lambda events: None,  # type: ignore[arg-type,return-value]
        publisher=None,  # type: ignore[arg-type]
        metrics=metrics,
        dlq_topic="lc.dlq",
    )
    for partition, lag in ((0, 500), (1, 7)):
        metrics.consumer_lag.labels("lc.inventory", "lc.orders", str(partition)).set(lag)

    await _Rebalance(runner).on_partitions_revoked([TopicPartition("lc.orders", 0)])

    assert lag_by_partition(metrics) == {"1": 7}
