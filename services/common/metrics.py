"""Prometheus metrics shared by every service, on a registry owned by the app.

Each app builds its own `CollectorRegistry` (no process-global state), so several apps can
live in one test process and each `/metrics` shows only its own service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Children:
    """`metric.labels(*values)`, looked up once per label values: `labels()` takes a lock
    and builds its key on every call, which on a per-event path costs more than the
    increment. For counters and histograms whose children are never removed."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


@dataclass(frozen=True, slots=True)
class PlatformMetrics:
    registry: CollectorRegistry
    http_requests: Counter
    http_latency: Histogram
    events_consumed: Counter
    events_published: Counter
    dead_lettered: Counter
    consumer_lag: Gauge
    consumer_batch_size: Histogram
    consumer_batch_mode: Gauge
    consumer_fetch_hold: Gauge
    handler_failures: Counter
    readiness: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> PlatformMetrics:
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            http_requests=Counter(
                "lc_http_requests",
                "HTTP requests answered, by route and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            http_latency=Histogram(
                "lc_http_request_seconds",
                "HTTP request latency by route",
                ["method", "route"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            events_consumed=Counter(
                "lc_events_consumed",
                "Kafka events consumed, by topic and type",
                ["group", "topic", "type"],
                registry=registry,
            ),
            events_published=Counter(
                "lc_events_published",
                "Kafka events published, by topic and type",
                ["topic", "type"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "lc_events_dead_lettered",
                "Messages sent to the DLQ, by source topic",
                ["group", "topic"],
                registry=registry,
            ),
            consumer_lag=Gauge(
                "lc_consumer_lag",
                "Messages behind the high watermark, by partition",
                ["group", "topic", "partition"],
                registry=registry,
            ),
            consumer_batch_size=Histogram(
                "lc_consumer_batch_size",
                "Events handled per consumed partition batch",
                ["group"],
                buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
                registry=registry,
            ),
            consumer_batch_mode=Gauge(
                "lc_consumer_batch_mode",
                "1 while the group's fetches wait a few ms to fill (a burst), 0 otherwise",
                ["group"],
                registry=registry,
            ),
            consumer_fetch_hold=Gauge(
                "lc_consumer_fetch_hold_seconds",
                "How long the broker holds each of the group's fetches to fill (0: none)",
                ["group"],
                registry=registry,
            ),
            handler_failures=Counter(
                "lc_consumer_handler_failures",
                "Batches whose handler raised (they are retried, never skipped)",
                ["group"],
                registry=registry,
            ),
            readiness=Gauge(
                "lc_readiness_check",
                "1 while a check of /readyz passes, 0 while it fails (evaluated at each scrape)",
                ["check"],
                registry=registry,
            ),
        )
