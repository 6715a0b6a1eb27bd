"""Prometheus metrics of inventory's decisions, on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, Children


@dataclass(frozen=True, slots=True)
class InventoryMetrics:
    decisions: Counter
    reserve_batch_size: Histogram
    decision_latency: Histogram
    holds_outstanding: Gauge
    sweeper_releases: Counter
    expiry_backlog: Gauge
    # `decisions.labels(outcome, replay)`, looked up once per pair (one per order).
    decision: Children = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision", Children(self.decisions))

    @classmethod
    def create(cls, registry: CollectorRegistry) -> InventoryMetrics:
        return cls(
            decisions=Counter(
                "lc_inventory_decisions",
                "Reservation decisions by outcome; replay=true when a stored decision was "
                "answered again (redelivery), which changes no counter",
                ["outcome", "replay"],
                registry=registry,
            ),
            reserve_batch_size=Histogram(
                "lc_inventory_reserve_batch_size",
                "order.placed events decided per reserve_batch.lua call",
                buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
                registry=registry,
            ),
            decision_latency=Histogram(
                "lc_inventory_decision_seconds",
                "From the consumed event's timestamp to its decision in Redis",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            holds_outstanding=Gauge(
                "lc_inventory_holds_outstanding",
                "Reservations held and not yet paid, cancelled or expired (last sweep)",
                registry=registry,
            ),
            sweeper_releases=Counter(
                "lc_inventory_sweeper_releases",
                "Overdue holds released by the sweeper",
                registry=registry,
            ),
            expiry_backlog=Gauge(
                "lc_inventory_expiry_backlog",
                "Expiries released before the last sweep and still not published to Kafka "
                "(outbox entries older than one sweep interval)",
                registry=registry,
            ),
        )
