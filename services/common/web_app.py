"""The aiohttp app factory every service builds on.

`create_base_app` gives the routes and middleware all services share (`/healthz`,
`/readyz`, `/metrics`, problem+json errors, body limit, request metrics);
`platform_context` opens and closes the Redis client and Kafka producer in
`app.cleanup_ctx`. A service adds its own routes and cleanup contexts after these.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from services.common.auth import Principal, Role, TokenVerifier, authenticate, require_role
from services.common.json_logging import configure_logging
from services.common.kafka_consumer import BatchHandler, ConsumerRunner
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics, ensure_topics
from services.common.metrics import PlatformMetrics
from services.common.problems import ProblemError, bad_request, problem_response, unprocessable
from services.common.readiness import Readiness, kafka_check, redis_check
from services.common.redis_scripts import create_redis
from services.common.schemas import first_error
from services.common.settings import Settings, SettingsError

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", PlatformMetrics)
READINESS = web.AppKey("readiness", Readiness)
REDIS = web.AppKey("redis", Redis)
PUBLISHER = web.AppKey("publisher", EventPublisher)
TOPICS = web.AppKey("topics", Topics)
VERIFIER = web.AppKey("token_verifier", TokenVerifier)
# Async steps run right before each /metrics answer, for gauges read from shared state
# (Redis): every process then reports the same, current value, never a stale one left by
# the last event it happened to handle.
MetricsRefresh = Callable[[], Awaitable[None]]
METRICS_REFRESH = web.AppKey("metrics_refresh", list[MetricsRefresh])
# A scrape with Redis away still answers, with the refreshed gauges as they were.
METRICS_REFRESH_TIMEOUT_S = 1.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as problem:
        return problem.response()
    except web.HTTPRequestEntityTooLarge as exc:
        return problem_response(413, "Content Too Large", exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(
            exc.status, exc.reason, exc.text or exc.reason, headers=_keep_headers(exc)
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(500, "Internal Server Error", "the server failed to answer")


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


def _metrics_middleware(metrics: PlatformMetrics) -> Any:
    # The labelled children, looked up once per (method, route, status): `labels()` takes a
    # lock and builds a key on every call, a visible share of a sold-out answer's cost.
    requests: dict[tuple[str, str, int], Any] = {}
    latencies: dict[tuple[str, str], Any] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            key = (request.method, name)
            latency = latencies.get(key)
            if latency is None:
                latency = latencies[key] = metrics.http_latency.labels(*key)
            counter = requests.get((*key, status))
            if counter is None:
                counter = requests[(*key, status)] = metrics.http_requests.labels(*key, str(status))
            counter.inc()
            latency.observe(time.perf_counter() - started)

    return middleware


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[READINESS].evaluate()
    if all(checks.values()):
        return web.Response(
            body=orjson.dumps({"status": "ready", "checks": checks}),
            content_type="application/json",
        )
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return problem_response(503, "Service Unavailable", f"not ready: {failing}", checks=checks)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    # Readiness as a series too, so an alert sees a process that answers 503 on /readyz.
    for name, ok in (await request.app[READINESS].evaluate()).items():
        metrics.readiness.labels(name).set(1 if ok else 0)
    for refresh in request.app[METRICS_REFRESH]:
        try:
            async with asyncio.timeout(METRICS_REFRESH_TIMEOUT_S):
                await refresh()
        except Exception:
            log.warning("metrics refresh failed", exc_info=True)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_base_app(settings: Settings, metrics: PlatformMetrics | None = None) -> web.Application:
    metrics = metrics or PlatformMetrics.create()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_metrics_middleware(metrics), problem_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[READINESS] = Readiness()
    app[TOPICS] = Topics.with_prefix(settings.topic_prefix)
    app[VERIFIER] = TokenVerifier(settings.jwt_secret)
    app[METRICS_REFRESH] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.cleanup_ctx.append(platform_context)
    return app


async def platform_context(app: web.Application) -> AsyncIterator[None]:
    """Redis client, topics and the Kafka producer, for the app's lifetime."""
    settings = app[SETTINGS]
    redis = create_redis(settings.redis_url)
    await ensure_topics(settings)
    producer = create_producer(settings)
    await producer.start()
    app[REDIS] = redis
    app[PUBLISHER] = EventPublisher(producer, app[METRICS], settings.publish_timeout_s)
    app[READINESS].add("redis", redis_check(redis))
    app[READINESS].add("kafka", kafka_check(producer))
    try:
        yield
    finally:
        try:
            # Flushes what is buffered; bounded, so a stop with the broker away ends.
            async with asyncio.timeout(10):
                await producer.stop()
        except TimeoutError:
            log.warning("producer did not flush within 10 s; stopping without it")
        await redis.aclose()


def consumer_for(
    app: web.Application,
    *,
    name: str,
    topics: Sequence[str],
    handler: BatchHandler,
    fetch_min_bytes: int = 1,
    handles: frozenset[str] | None = None,
    adaptive_fetch: bool = False,
) -> ConsumerRunner:
    """The service's consumer group `<topic prefix><name>`, wired to the app's publisher,
    metrics and DLQ, its health part of `/readyz` ("consumer"). The caller starts it in
    its cleanup context and stops it before the platform context closes."""
    settings = app[SETTINGS]
    runner = ConsumerRunner(
        settings=settings,
        group=f"{settings.topic_prefix}{name}",
        topics=topics,
        handler=handler,
        publisher=app[PUBLISHER],
        metrics=app[METRICS],
        dlq_topic=app[TOPICS].dlq,
        fetch_min_bytes=fetch_min_bytes,
        handles=handles,
        adaptive_fetch=adaptive_fetch,
    )

    async def healthy() -> bool:
        return runner.healthy

    app[READINESS].add("consumer", healthy)
    return runner


def principal(request: web.Request, *roles: Role) -> Principal:
    """The caller, authenticated (401) and, when roles are given, authorized (403)."""
    who = authenticate(request, request.app[VERIFIER])
    return require_role(who, *roles) if roles else who


async def read_json_body(request: web.Request, schema: str) -> dict[str, Any]:
    """The request body as a dict valid against `schemas/http/<schema>.json`.

    Too large: 413 (the app's `client_max_size`). Not JSON: 400. Not an object, unknown
    fields, wrong types, missing required fields: 422. Nothing has changed at that point.
    """
    raw = await request.read()
    if not raw:
        raise bad_request("request body is empty; a JSON object is required")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    error = first_error(f"http/{schema}.json", body)
    if error is not None:
        raise unprocessable(error)
    if not isinstance(body, dict):
        raise unprocessable("request body must be a JSON object")
    return body


def run(app: web.Application, settings: Settings) -> None:
    loop = uvloop.new_event_loop() if settings.event_loop == "uvloop" else asyncio.new_event_loop()
    web.run_app(
        app,
        loop=loop,
        host=settings.http_host,
        port=settings.http_port,
        access_log=None,
        print=None,
        shutdown_timeout=10,
    )


def serve(service: str, create_app: Callable[[Settings], web.Application]) -> int:
    """The body of every service's `__main__`: settings (fail loudly), logs, serve."""
    try:
        settings = Settings.from_env(service)
    except SettingsError as exc:
        print(f"{service}: configuration error: {exc}", flush=True)
        return 2
    configure_logging(service, settings.log_level)
    if len(settings.jwt_secret.encode()) < 32:
        log.warning("LC_JWT_SECRET is shorter than 32 bytes; use a longer random secret")
    log.info("starting", extra={"port": settings.http_port, "instance": settings.instance_id})
    run(create_app(settings), settings)
    return 0
