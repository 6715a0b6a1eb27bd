"""live_orders' own Prometheus metrics, on the app's registry (next to PlatformMetrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, Children


@dataclass(frozen=True, slots=True)
class LiveOrdersMetrics:
    # Orders by how they ended up: created (pending), refused here, and every outcome
    # applied from inventory. Counted once per order and state, never per replay.
    order_outcomes: Counter
    fast_path_rejections: Counter
    rate_limited: Counter
    # From the moment an order was accepted to the moment its decision reached the store.
    decision_latency: Histogram
    waiters: Gauge
    ignored_outcomes: Counter
    broadcast_reconnects: Counter
    republished_orders: Counter
    # `order_outcomes.labels(label)`, looked up once per label.
    outcome: Children = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Children(self.order_outcomes))

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LiveOrdersMetrics:
        return cls(
            order_outcomes=Counter(
                "lc_live_orders_order_outcomes",
                "Orders entering a state: pending, reserved, rejected (by reason), paid, ...",
                ["outcome"],
                registry=registry,
            ),
            fast_path_rejections=Counter(
                "lc_live_orders_fast_path_rejections",
                "Attempts refused as sold out without asking inventory",
                registry=registry,
            ),
            rate_limited=Counter(
                "lc_live_orders_rate_limited",
                "Order attempts refused with 429 by the per-buyer token bucket",
                registry=registry,
            ),
            decision_latency=Histogram(
                "lc_live_orders_decision_seconds",
                "Order accepted -> reservation decision applied",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            waiters=Gauge(
                "lc_live_orders_waiters",
                "HTTP requests of this process waiting for an order to change",
                registry=registry,
            ),
            ignored_outcomes=Counter(
                "lc_live_orders_ignored_outcomes",
                "Inventory outcomes that changed nothing (repeat, stale, unknown order)",
                ["type", "why"],
                registry=registry,
            ),
            broadcast_reconnects=Counter(
                "lc_live_orders_broadcast_reconnects",
                "Times the Redis pub/sub listener (re)subscribed after an error",
                registry=registry,
            ),
            republished_orders=Counter(
                "lc_live_orders_republished_orders",
                "Orders found unpublished in the outbox by the sweep and published again",
                registry=registry,
            ),
        )
