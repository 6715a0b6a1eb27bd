"""The notifier app: the platform app plus live views (counters, picks, leaderboard)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.background import stop_tasks
from services.common.kafka_consumer import GATHER_FETCH_MIN_BYTES
from services.common.settings import Settings
from services.common.web_app import (
    METRICS,
    METRICS_REFRESH,
    PUBLISHER,
    REDIS,
    SETTINGS,
    TOPICS,
    consumer_for,
    create_base_app,
)
from services.notifier.app_keys import (
    LEADERBOARD_FEED,
    NOTIFIER_METRICS,
    PICK_COMPLETION,
    PICK_FEED,
    PICK_STORE,
    PROJECTION,
    SESSION_FEED,
    TICKER,
    TRACES,
)
from services.notifier.handlers import EventHandlers, consumed_topics
from services.notifier.http_api import LEADERBOARD_SIZE, leaderboard_filter, setup_routes
from services.notifier.live_feeds import PickFeed, SnapshotFeed, Ticker
from services.notifier.metrics import NotifierMetrics
from services.notifier.pick_completion import PickCompletion
from services.notifier.pick_store import PickStore
from services.notifier.projection_store import ProjectionStore
from services.notifier.redis_keys import NotifierKeys
from services.notifier.retention import RetentionSweep
from services.notifier.trace_store import TraceStore


def create_app(settings: Settings) -> web.Application:
    app = create_base_app(settings)
    app[NOTIFIER_METRICS] = NotifierMetrics.create(app[METRICS].registry)
    setup_routes(app)
    app.cleanup_ctx.append(notifier_context)
    app.on_shutdown.append(close_live_clients)
    return app


async def notifier_context(app: web.Application) -> AsyncIterator[None]:
    """Stores, feeds, the push ticker and the consumer, for the app's lifetime (after
    `platform_context` opened Redis and the producer)."""
    settings = app[SETTINGS]
    metrics = app[NOTIFIER_METRICS]
    keys = NotifierKeys(settings.redis_prefix)
    redis = app[REDIS]
    # Outcome guards outlive the topics' replay window: a replay from the oldest record
    # Kafka still holds finds them.
    projection = ProjectionStore(
        redis,
        keys,
        guard_ttl_s=-(-settings.replay_window_ms // 1000),
        trace_retention_s=settings.trace_retention_s,
    )
    picks = PickStore(
        redis,
        keys,
        pick_retention_s=settings.pick_retention_s,
        trace_retention_s=settings.trace_retention_s,
    )
    session_feed = SnapshotFeed(
        kind="session_ws", frame_type="snapshot", load=projection.session_payloads, metrics=metrics
    )

    async def load_leaderboard(keys_: list[str]) -> dict[str, dict[str, object]]:
        # One feed key per board: the whole one, and one per pavilion watched.
        return {
            key: {
                "sessions": await projection.leaderboard(LEADERBOARD_SIZE, leaderboard_filter(key))
            }
            for key in keys_
        }

    leaderboard_feed = SnapshotFeed(
        kind="leaderboard_ws", frame_type="leaderboard", load=load_leaderboard, metrics=metrics
    )
    pick_feed = PickFeed(picks, metrics)
    ticker = Ticker(settings.push_interval_s, [session_feed, leaderboard_feed, pick_feed])
    app[PROJECTION] = projection
    app[PICK_STORE] = picks
    completion = PickCompletion(
        picks, app[PUBLISHER], app[TOPICS].picks, source=settings.instance_id
    )
    app[PICK_COMPLETION] = completion
    app[TRACES] = TraceStore(redis, keys, picks)
    app[SESSION_FEED] = session_feed
    app[LEADERBOARD_FEED] = leaderboard_feed
    app[PICK_FEED] = pick_feed
    app[TICKER] = ticker

    async def count_open_picks() -> None:
        for warehouse_id, count in (await picks.open_counts()).items():
            metrics.open_picks.labels(warehouse_id).set(count)

    app[METRICS_REFRESH].append(count_open_picks)

    handlers = EventHandlers(keys=keys, projection=projection, picks=picks, metrics=metrics)
    runner = consumer_for(
        app,
        name="notifier",
        topics=consumed_topics(app[TOPICS]),
        # Nobody waits on the notifier's consumer but the host's next push (every 250 ms):
        # let the broker gather a fetch's worth of events for up to the fetch wait, so a
        # burst is applied in a few large batches (one Lua call each), not thousands.
        fetch_min_bytes=GATHER_FETCH_MIN_BYTES,
        handler=handlers,
        handles=handlers.handles,
    )
    await runner.start()
    ticking = asyncio.create_task(ticker.run(), name="notifier:push")
    sweeping = asyncio.create_task(completion.run(), name="notifier:pick-completions")
    retention = asyncio.create_task(RetentionSweep(picks).run(), name="notifier:retention")
    try:
        yield
    finally:
        await stop_tasks(retention, sweeping, ticking)
        await runner.stop()


async def close_live_clients(app: web.Application) -> None:
    """On shutdown, end every live socket and stream (1001) so handlers return at once;
    clients reconnect to another process and continue from Redis."""
    if TICKER in app:
        app[TICKER].close_all()
