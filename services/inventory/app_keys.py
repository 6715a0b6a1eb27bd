"""Typed app state of the inventory service (beyond the platform's AppKeys)."""

from __future__ import annotations

from aiohttp import web

from services.inventory.journal_store import JournalStore
from services.inventory.metrics import InventoryMetrics
from services.inventory.stock_store import StockStore

STOCK_STORE = web.AppKey("stock_store", StockStore)
INVENTORY_METRICS = web.AppKey("inventory_metrics", InventoryMetrics)
JOURNAL_STORE = web.AppKey("journal_store", JournalStore)
