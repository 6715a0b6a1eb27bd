"""The live_orders app: the platform app plus this service's routes and consumers.

`create_app` builds the routes; `live_orders_context` (a cleanup context, after the
platform's Redis client and Kafka producer exist) wires the stores and use cases and runs
the three background parts of a process, stopped in reverse on shutdown:
- the pub/sub listener (waiters and the sold-out set of this process),
- the sold-out refresh (safety net for missed broadcasts),
- the inventory consumer (applies outcome events; one group across all processes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.background import stop_tasks
from services.common.redis_batch import TickPipeline
from services.common.settings import Settings
from services.common.web_app import (
    METRICS,
    PUBLISHER,
    READINESS,
    REDIS,
    SETTINGS,
    TOPICS,
    consumer_for,
    create_base_app,
)
from services.live_orders.app_keys import (
    BROADCAST,
    LIVE_ORDERS_METRICS,
    OUTCOME_CONSUMER,
    USE_CASES,
    UseCases,
)
from services.live_orders.broadcast import BroadcastListener
from services.live_orders.handlers import EventHandlers
from services.live_orders.http_api import setup_routes
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_context import OrderContextCache
from services.live_orders.order_outbox import OrderOutbox
from services.live_orders.order_store import OrderStore
from services.live_orders.order_waiters import OrderWaiters
from services.live_orders.orders import OrderLimits, OrderService
from services.live_orders.redis_keys import RedisKeys
from services.live_orders.session_store import SessionStore
from services.live_orders.sessions import SessionService
from services.live_orders.sold_out import SoldOutSkus


def create_app(settings: Settings) -> web.Application:
    app = create_base_app(settings)
    app[LIVE_ORDERS_METRICS] = LiveOrdersMetrics.create(app[METRICS].registry)
    setup_routes(app)
    app.cleanup_ctx.append(live_orders_context)
    return app


async def live_orders_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    topics = app[TOPICS]
    redis = app[REDIS]
    publisher = app[PUBLISHER]
    metrics = app[LIVE_ORDERS_METRICS]
    keys = RedisKeys(settings.redis_prefix)

    # The commands of every request in one loop tick share one round trip (redis_batch.py).
    pipeline = TickPipeline(redis, read_timeout_s=settings.redis_timeout_s)
    order_store = OrderStore(redis, keys, settings.order_retention_s, pipeline)
    session_store = SessionStore(redis, keys, pipeline)
    contexts = OrderContextCache(session_store)
    sold_out = SoldOutSkus(redis, keys, pipeline)
    waiters = OrderWaiters(order_store.get, metrics)
    outbox = OrderOutbox(
        store=order_store,
        publisher=publisher,
        topic=topics.orders,
        source=settings.instance_id,
        metrics=metrics,
    )
    app[USE_CASES] = UseCases(
        sessions=SessionService(
            session_store, publisher, topics.sessions, settings.instance_id, contexts
        ),
        orders=OrderService(
            orders=order_store,
            contexts=contexts,
            sold_out=sold_out,
            waiters=waiters,
            outbox=outbox,
            publisher=publisher,
            orders_topic=topics.orders,
            source=settings.instance_id,
            limits=OrderLimits(settings.rate_limit_burst, settings.rate_limit_per_s),
            metrics=metrics,
        ),
    )

    # Names this process in its outcome announcements, so its listener skips its own
    # (random, not LC_INSTANCE_ID: two processes given the same id must not miss each other).
    announcer = uuid.uuid4().hex
    # Listen before consuming: an outcome applied by this process's own consumer is then
    # always heard by its own waiters.
    listener = BroadcastListener(
        redis=redis,
        keys=keys,
        waiters=waiters,
        sold_out=sold_out,
        contexts=contexts,
        metrics=metrics,
        source=announcer,
    )
    await listener.start()
    app[BROADCAST] = listener
    await sold_out.refresh()
    refresher = asyncio.create_task(sold_out.refresh_forever(), name="live_orders:sold-out")
    outbox_task = asyncio.create_task(outbox.run(), name="live_orders:outbox")

    handlers = EventHandlers(
        orders=order_store, sold_out=sold_out, waiters=waiters, metrics=metrics, source=announcer
    )
    consumer = consumer_for(
        app,
        name="live_orders",
        topics=[topics.inventory],
        handler=handlers,
        handles=handlers.handles,
        adaptive_fetch=True,
        fetch_policy=waiters.hold_fetches,
    )
    await consumer.start()
    app[OUTCOME_CONSUMER] = consumer

    async def listener_alive() -> bool:
        return listener.alive

    app[READINESS].add("broadcast", listener_alive)
    try:
        yield
    finally:
        await consumer.stop()
        await stop_tasks(outbox_task, refresher)
        await outbox.drain()
        await listener.stop()
        await pipeline.aclose()
