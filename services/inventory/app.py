"""The inventory app: the platform app plus this service's routes and consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.background import stop_tasks
from services.common.kafka_consumer import GATHER_FETCH_MIN_BYTES
from services.common.metrics import PlatformMetrics
from services.common.redis_batch import TickPipeline
from services.common.settings import Settings
from services.common.web_app import (
    PUBLISHER,
    REDIS,
    SETTINGS,
    TOPICS,
    consumer_for,
    create_base_app,
)
from services.inventory.app_keys import INVENTORY_METRICS, JOURNAL_STORE, STOCK_STORE
from services.inventory.domain import trace_key
from services.inventory.handlers import EventHandlers
from services.inventory.hold_sweeper import HoldSweeper, OutboxPublisher
from services.inventory.http_api import add_routes
from services.inventory.journal_store import JournalStore
from services.inventory.metrics import InventoryMetrics
from services.inventory.retention_sweeper import RetentionSweeper
from services.inventory.stock_store import StockStore


def create_app(settings: Settings) -> web.Application:
    metrics = PlatformMetrics.create()
    app = create_base_app(settings, metrics)
    app[INVENTORY_METRICS] = InventoryMetrics.create(metrics.registry)
    add_routes(app)
    # After the platform context (appended by create_base_app): Redis and the producer
    # are open when this starts, and still open while it stops.
    app.cleanup_ctx.append(inventory_context)
    return app


async def inventory_context(app: web.Application) -> AsyncIterator[None]:
    """The stock and journal stores, the orders and picks consumers, the hold sweeper and
    its outbox publisher."""
    settings = app[SETTINGS]
    topics = app[TOPICS]
    publisher = app[PUBLISHER]
    metrics = app[INVENTORY_METRICS]
    # The scripts of every batch in one loop tick share a write (redis_batch.py).
    pipeline = TickPipeline(app[REDIS], read_timeout_s=settings.redis_timeout_s)
    store = StockStore(app[REDIS], settings, pipeline)
    app[STOCK_STORE] = store
    journals = JournalStore(app[REDIS], settings.redis_prefix, settings.replay_window_ms)
    app[JOURNAL_STORE] = journals

    handlers = EventHandlers(
        store=store,
        journals=journals,
        publisher=publisher,
        topics=topics,
        metrics=metrics,
        source=settings.instance_id,
        trace_key=trace_key(settings.trace_key_secret),
    )
    # Two members of the group: the orders on the buyer's path, fetching only their 12
    # partitions (a fetch costs client and broker per partition it names, and this one
    # runs every few ms under load), and the picks topic's pick.completed for the lot
    # journals, fetched like the notifier's (nobody waits on them; inventory's own
    # pick.requested there are passed over undecoded: not in `handles`). One group, so
    # each keeps the offsets the group committed when one member read both.
    consumer = consumer_for(
        app,
        name="inventory",
        topics=[topics.orders],
        handler=handlers,
        handles=handlers.handles,
        adaptive_fetch=True,
    )
    picks_consumer = consumer_for(
        app,
        name="inventory",
        topics=[topics.picks],
        handler=handlers,
        handles=handlers.handles,
        fetch_min_bytes=GATHER_FETCH_MIN_BYTES,
        check="picks_consumer",
    )
    sweeper = HoldSweeper(store=store, metrics=metrics, interval_s=settings.sweep_interval_s)
    outbox = OutboxPublisher(
        store=store,
        publisher=publisher,
        topics=topics,
        source=settings.instance_id,
        interval_s=settings.sweep_interval_s,
        wake=sweeper.released,
    )

    await consumer.start()
    await picks_consumer.start()
    tasks = [
        asyncio.create_task(sweeper.run(), name="inventory:sweeper"),
        asyncio.create_task(outbox.run(), name="inventory:outbox"),
        asyncio.create_task(RetentionSweeper(store=store).run(), name="inventory:retention"),
    ]
    try:
        yield
    finally:
        # The consumer first: its batch in flight finishes and commits while Redis and
        # the producer are still open. Then the loops, which hold no state of their own.
        await consumer.stop()
        await picks_consumer.stop()
        await stop_tasks(*tasks)
        await pipeline.aclose()
