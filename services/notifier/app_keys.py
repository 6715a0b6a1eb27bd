"""Typed app state of the notifier (set by `app.notifier_context`)."""

from __future__ import annotations

from aiohttp import web

from services.notifier.live_feeds import PickFeed, SnapshotFeed, Ticker
from services.notifier.metrics import NotifierMetrics
from services.notifier.pick_completion import PickCompletion
from services.notifier.pick_store import PickStore
from services.notifier.projection_store import ProjectionStore
from services.notifier.trace_store import TraceStore

NOTIFIER_METRICS = web.AppKey("notifier_metrics", NotifierMetrics)
PROJECTION = web.AppKey("projection", ProjectionStore)
PICK_STORE = web.AppKey("pick_store", PickStore)
PICK_COMPLETION = web.AppKey("pick_completion", PickCompletion)
TRACES = web.AppKey("traces", TraceStore)
SESSION_FEED = web.AppKey("session_feed", SnapshotFeed)
LEADERBOARD_FEED = web.AppKey("leaderboard_feed", SnapshotFeed)
PICK_FEED = web.AppKey("pick_feed", PickFeed)
TICKER = web.AppKey("ticker", Ticker)
