"""The aiohttp app factory every service builds on.

`create_base_app` gives the routes and middleware all services share (`/healthz`,
`/readyz`, `/metrics`, problem+json errors, request metrics, and the guards against
hostile requests: body size, bodies where none belong, ids outside the grammar,
malformed HTTP);
`platform_context` opens and closes the Redis client and Kafka producer in
`app.cleanup_ctx`. A service adds its own routes and cleanup contexts after these.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
import uvloop
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from services.common import task_dump
from services.common.auth import Principal, Role, TokenVerifier, authenticate, require_role
from services.common.identifiers import ID_RULE, is_valid_id
from services.common.json_logging import configure_logging
from services.common.kafka_consumer import BatchHandler, ConsumerRunner, FetchPolicy, hold_by_rate
from services.common.kafka_producer import EventPublisher, create_producer
from services.common.kafka_topics import Topics, ensure_topics
from services.common.messages import Message
from services.common.metrics import Children, PlatformMetrics
from services.common.openapi import (
    API_DESCRIPTION,
    ID_PARAMETERS,
    ApiDescription,
    Operation,
    Reply,
    describe,
    openapi_document,
    problem,
)
from services.common.problems import (
    ProblemError,
    bad_request,
    not_found,
    problem_response,
    unprocessable,
)
from services.common.readiness import Readiness, kafka_check, redis_check
from services.common.redis_scripts import RedisClient, create_redis
from services.common.schemas import first_error, integer_fields
from services.common.settings import Settings, SettingsError
from services.common.transport_security import redis_security_kwargs

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", PlatformMetrics)
READINESS = web.AppKey("readiness", Readiness)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
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
H = TypeVar("H", bound=Handler)

# The route handlers that read a request body (`read_json_body`); every other route refuses
# one before its handler runs. Functions, registered at import by `takes_json_body`.
_BODY_HANDLERS: set[Callable[..., Any]] = set()


def takes_json_body(handler: H) -> H:
    """Mark a route handler as one that reads a JSON body: requests to any other route
    that carry a body are refused (413) without reading it."""
    _BODY_HANDLERS.add(handler)
    return handler


# Route handlers that need no bearer token in the request (pages, sockets that take the
# token as their first message, public lookups): an id outside the grammar is a plain 404
# there. Elsewhere the caller is authenticated first (401 before anything is revealed).
_OPEN_HANDLERS: set[Callable[..., Any]] = set()


def open_route(handler: H) -> H:
    """Mark a route handler as one that a request without an Authorization header may
    reach (it authenticates by other means, or needs no caller)."""
    _OPEN_HANDLERS.add(handler)
    return handler


# A body on a route that takes none is read and ignored up to this size (clients that send
# `{}` with every POST); above it, or of unknown length, it is refused unread (413).
IGNORED_BODY_MAX = 1024


# A service's own exceptions as problems (live_orders: its domain errors, and a backend
# error with its own advice), asked before the platform's mapping; None: not one of its own.
ProblemTranslator = Callable[[web.Request, Exception], ProblemError | None]
PROBLEM_TRANSLATORS = web.AppKey("problem_translators", list[ProblemTranslator])


def _problem_for(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request whose handler raised `exc` (re-raised: an HTTPException
    below 400, a redirect)."""
    for translate in request.app[PROBLEM_TRANSLATORS]:
        translated = translate(request, exc)
        if translated is not None:
            return translated.response()
    if isinstance(exc, ProblemError):
        return exc.response()
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return problem_response(413, "Content Too Large", exc.text or "request body too large")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return problem_response(
            exc.status, exc.reason, exc.text or exc.reason, headers=_keep_headers(exc)
        )
    if isinstance(exc, (RedisError, KafkaError)):
        # Redis or the broker away (a restart, a failover): a clear 503 the client may
        # retry, not a 500. Every write is one atomic step or safe to repeat, so nothing
        # half-done is left behind (live_orders says how to retry an order).
        log.warning("backend unavailable", extra={"path": request.path, "error": repr(exc)})
        return problem_response(
            503,
            "Service Unavailable",
            "a backend is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, ConnectionError) and request.transport is None:
        # The client went away (mid-body, or before its answer): nothing failed here,
        # and nobody is left to read an answer.
        log.info("client disconnected", extra={"path": request.path, "method": request.method})
        return problem_response(400, "Bad Request", "the client disconnected")
    log.exception(
        "unhandled error", extra={"path": request.path, "method": request.method}, exc_info=exc
    )
    return problem_response(500, "Internal Server Error", "the server failed to answer")


def refuse_hostile_input(request: web.Request) -> None:
    """Refusals that need no handler, before any body is read or any work is done: a
    declared body over the limit (413, also on routes that read none), a body over
    IGNORED_BODY_MAX on a route that takes none (413), and path ids outside the grammar
    (404: they name nothing; after the 401 of a caller without a valid token, except on
    open routes)."""
    length = request.content_length
    limit = request.client_max_size
    if length is not None and length > limit:
        raise ProblemError(
            413,
            "Content Too Large",
            f"the request body ({length} bytes) is over the limit of {limit} bytes",
        )
    route = request.match_info.route
    if route.resource is None:  # no route matched: 404 or 405 follows, the body unread
        return
    if not isinstance(route.resource, web.StaticResource):
        for name, value in request.match_info.items():
            if name in ID_PARAMETERS and not is_valid_id(value):
                if route.handler not in _OPEN_HANDLERS:
                    principal(request)  # 401 for a caller without a valid token
                raise not_found(f"no such {name.removesuffix('_id')}: ids are {ID_RULE}")
    if route.handler not in _BODY_HANDLERS and (
        (length is not None and length > IGNORED_BODY_MAX)
        or (length is None and request.body_exists)
    ):
        raise ProblemError(413, "Content Too Large", "this route takes no request body")


def _platform_middleware(metrics: PlatformMetrics) -> Any:
    """Every request's one middleware: the hostile-input refusals, problem+json for every
    error (a service's own exceptions through its PROBLEM_TRANSLATORS), and the request
    metrics. One coroutine, not one per concern: each middleware layer costs a call and an
    await per request, a visible share of a sold-out answer (bench/RESULTS.md)."""
    requests = Children(metrics.http_requests)
    latencies = Children(metrics.http_latency)

    @web.middleware
    async def platform(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            try:
                refuse_hostile_input(request)
                response = await handler(request)
            except Exception as exc:
                response = _problem_for(request, exc)
            if (
                not response.prepared
                and request.body_exists
                and request.transport is not None  # not a client that went away
                and not request.content.is_eof()
            ):
                # Answered before the body arrived (refused, or timed out): what is still on
                # the way is not a next request, so the connection ends with this answer.
                response.force_close()
            status = response.status
            return response
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            requests(request.method, name, str(status)).inc()
            latencies(request.method, name).observe(time.perf_counter() - started)

    return platform


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what its HTTP parser refuses (a header line
    over 8190 bytes, a control character in a header value, a malformed request line) with
    problem+json like every other refusal, logged on one line instead of a traceback.

    The parser runs before any middleware, request factory or signal sees the request, and
    its answer comes from `handle_error`; this is the one place to change it."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        # The parser's first line, without the request bytes it quotes after a colon.
        first_line = next(iter((message or "").strip().splitlines()), "")
        detail = first_line.split(": b", 1)[0].strip().rstrip(":")[:200]
        log.info("malformed request refused", extra={"status": status, "error": detail})
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent on this connection")
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Bad Request"
        response = problem_response(status, title, detail or "malformed HTTP request")
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


def _answer_malformed_requests_with_problems(app: web.Application) -> None:
    """Make the app's server use `_ProblemRequestHandler`, however it is run (`web.run_app`
    and every `web.AppRunner` build their server with the app's `_make_handler`)."""
    make_server = app._make_handler

    def make(**kwargs: Any) -> web.Server:
        server = make_server(**kwargs)
        # Same state, one method more: the server's own constructor arguments stay as
        # aiohttp chose them.
        server.__class__ = _ProblemServer
        return server

    # Bypasses Application.__setattr__, which warns about new attributes in debug mode.
    object.__setattr__(app, "_make_handler", make)


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


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


@open_route
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps(openapi_document(request.app)), content_type="application/json"
    )


# The platform's own routes, described once for every service.
PLATFORM_OPERATIONS = {
    ("GET", "/healthz"): Operation(
        "Process alive",
        {200: Reply("alive", {"type": "object", "required": ["status"]})},
        auth="none",
    ),
    ("GET", "/readyz"): Operation(
        "Kafka, Redis and the consumers healthy",
        {
            200: Reply("ready", {"type": "object", "required": ["status", "checks"]}),
            503: problem("not ready: the failing checks are named (`checks`)"),
        },
        auth="none",
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics",
        {200: Reply("Prometheus text format", {"type": "string"}, "text/plain")},
        auth="none",
    ),
    ("GET", "/openapi.json"): Operation(
        "This OpenAPI 3.1 document",
        {200: Reply("the document", {"type": "object", "required": ["openapi", "paths"]})},
        auth="none",
    ),
}


def create_base_app(settings: Settings, metrics: PlatformMetrics | None = None) -> web.Application:
    metrics = metrics or PlatformMetrics.create()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_platform_middleware(metrics)],
        # After an early answer, the rest of a body is read and dropped for at most this
        # long (so the client sees the answer, not a reset), then the connection closes.
        handler_args={"lingering_time": settings.body_read_timeout_s},
    )
    _answer_malformed_requests_with_problems(app)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[READINESS] = Readiness()
    app[TOPICS] = Topics.with_prefix(settings.topic_prefix)
    app[VERIFIER] = TokenVerifier(settings.jwt_secret)
    app[METRICS_REFRESH] = []
    app[PROBLEM_TRANSLATORS] = []
    app[API_DESCRIPTION] = ApiDescription(title=settings.service)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi_json)
    describe(app, PLATFORM_OPERATIONS)
    app.cleanup_ctx.append(platform_context)
    return app


async def platform_context(app: web.Application) -> AsyncIterator[None]:
    """Redis client, topics and the Kafka producer, for the app's lifetime."""
    settings = app[SETTINGS]
    redis = create_redis(
        settings.redis_url,
        timeout_s=settings.redis_timeout_s,
        cluster=settings.redis_cluster,
        security=redis_security_kwargs(settings),
    )
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
    handles: Collection[type[Message]] | None = None,
    adaptive_fetch: bool = False,
    fetch_policy: FetchPolicy = hold_by_rate,
    check: str = "consumer",
) -> ConsumerRunner:
    """A member of the service's consumer group `<topic prefix><name>`, wired to the app's
    publisher, metrics and DLQ, its health part of `/readyz` (as `check`). The caller
    starts it in its cleanup context and stops it before the platform context closes.
    Members of one group in one process (each with its own topics) each fetch only
    their own partitions."""
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
        fetch_policy=fetch_policy,
    )

    async def healthy() -> bool:
        return runner.healthy

    app[READINESS].add(check, healthy)
    return runner


def principal(request: web.Request, *roles: Role) -> Principal:
    """The caller, authenticated (401) and, when roles are given, authorized (403)."""
    who = authenticate(request, request.app[VERIFIER])
    return require_role(who, *roles) if roles else who


async def read_json_body(request: web.Request, schema: str) -> dict[str, Any]:
    """The request body as a dict valid against `schemas/http/<schema>.json`.

    Not declared JSON (`Content-Type` other than `application/json` or
    `application/*+json`, charset other than UTF-8): 415, unread. Too large: 413 (the
    app's `client_max_size`). Not all there within `body_read_timeout_s`: 408. Not JSON:
    400. Not an object, unknown fields, wrong types (`1.0` where an integer belongs),
    missing required fields: 422. Nothing has changed at that point.
    """
    _require_json_content_type(request)
    if request.content.is_eof():
        # All there already (a small body comes with its headers): no deadline to arm.
        raw = await request.read()
    else:
        timeout_s = request.app[SETTINGS].body_read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
        except TimeoutError as exc:
            raise ProblemError(
                408, "Request Timeout", f"the request body did not arrive within {timeout_s:g} s"
            ) from exc
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
    # JSON Schema counts 1.0 as an integer; quantities and money are whole numbers on the
    # wire too.
    for name in integer_fields(f"http/{schema}.json"):
        value = body.get(name)
        if value is not None and type(value) is not int:
            raise unprocessable(f"{name}: {value!r} is not an integer")
    return body


def _require_json_content_type(request: web.Request) -> None:
    media_type = request.content_type.lower() if "Content-Type" in request.headers else ""
    charset = (request.charset or "utf-8").lower()
    is_json = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if not is_json or charset not in ("utf-8", "utf8"):
        shown = request.headers.get("Content-Type", "none")[:100]
        raise ProblemError(
            415,
            "Unsupported Media Type",
            f"the body must be JSON sent as Content-Type: application/json (got {shown!r})",
        )


# Cyclic garbage collection: a request allocates hundreds of objects, so with Python's
# default gen-0 threshold (700) a collection ran every few requests, 6-7% of live_orders'
# CPU under load (py-spy --native: gc_collect_main). Few of those objects are in cycles
# (reference counting frees the rest), so the young generation is collected 14 times less
# often; the older ones about as often as by default (a full collection every ~150,000
# allocations, 70,000 by default), since that is what frees the cycles of closed
# connections (a notifier with 1,000 WebSocket connects and leaves grew 10 MiB when full
# collections came every 4 million). The objects alive at start (modules, compiled
# schemas, the app) are frozen out of every collection.
GC_THRESHOLDS = (10_000, 5, 2)


def run(app: web.Application, settings: Settings) -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    loop = uvloop.new_event_loop() if settings.event_loop == "uvloop" else asyncio.new_event_loop()
    # `kill -USR1 <pid>` logs every task and what it waits for (docs/operations.md).
    task_dump.install(loop)
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
