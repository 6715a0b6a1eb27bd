"""Typed app state of live_orders (beyond the platform's AppKeys), set by `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.common.kafka_consumer import ConsumerRunner
from services.live_orders.broadcast import BroadcastListener
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.orders import OrderService
from services.live_orders.sessions import SessionService


@dataclass(frozen=True, slots=True)
class UseCases:
    sessions: SessionService
    orders: OrderService


USE_CASES = web.AppKey("live_orders_use_cases", UseCases)
LIVE_ORDERS_METRICS = web.AppKey("live_orders_metrics", LiveOrdersMetrics)
OUTCOME_CONSUMER = web.AppKey("live_orders_outcome_consumer", ConsumerRunner)
BROADCAST = web.AppKey("live_orders_broadcast", BroadcastListener)
