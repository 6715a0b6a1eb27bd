"""The notifier's own metrics, on the app's registry beside the platform metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True, slots=True)
class NotifierMetrics:
    clients: Gauge
    frames_sent: Counter
    queue_drops: Counter
    slow_disconnects: Counter
    flood_disconnects: Counter
    projection_lag: Gauge
    events_applied: Counter
    events_skipped: Counter
    open_picks: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> NotifierMetrics:
        return cls(
            clients=Gauge(
                "lc_notifier_clients",
                "Connected live clients, by kind (session_ws, session_sse, picks_ws, "
                "leaderboard_ws)",
                ["kind"],
                registry=registry,
            ),
            frames_sent=Counter(
                "lc_notifier_frames_sent",
                "Frames (snapshots, picks, leaderboards) sent to clients, by kind",
                ["kind"],
                registry=registry,
            ),
            queue_drops=Counter(
                "lc_notifier_send_queue_drops",
                "Frames a slow client never got: replaced by a newer snapshot before sending",
                ["kind"],
                registry=registry,
            ),
            slow_disconnects=Counter(
                "lc_notifier_slow_client_disconnects",
                "Clients disconnected because they did not keep up (queue full or send stuck)",
                ["kind"],
                registry=registry,
            ),
            flood_disconnects=Counter(
                "lc_notifier_flood_disconnects",
                "Clients closed (1008) for sending more messages a second than a page does",
                ["kind"],
                registry=registry,
            ),
            projection_lag=Gauge(
                "lc_notifier_projection_lag_seconds",
                "Age of the newest event of the last batch applied, by topic",
                ["topic"],
                registry=registry,
            ),
            events_applied=Counter(
                "lc_notifier_events_applied",
                "Events whose effect reached the projection, by topic",
                ["topic"],
                registry=registry,
            ),
            events_skipped=Counter(
                "lc_notifier_events_skipped",
                "Events skipped as already applied (redelivered or re-published), by topic",
                ["topic"],
                registry=registry,
            ),
            open_picks=Gauge(
                "lc_notifier_open_picks",
                "Pick tasks opened and not yet completed, by warehouse (read from Redis at "
                "each scrape: the same in every notifier process)",
                ["warehouse_id"],
                registry=registry,
            ),
        )
