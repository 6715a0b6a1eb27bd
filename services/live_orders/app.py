"""The live_orders app: the platform app plus this service's routes and consumers."""

from __future__ import annotations

from aiohttp import web

from services.common.settings import Settings
from services.common.web_app import create_base_app


def create_app(settings: Settings) -> web.Application:
    app = create_base_app(settings)
    return app
