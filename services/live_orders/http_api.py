"""HTTP routes of live_orders (DESIGN 4.3). Handlers only translate: authenticate, parse,
call a use case, turn its result (or domain error) into an answer.

Choices the contract leaves open:
- an order for a SKU not listed in the session is 422 (the session exists; the body names
  something it does not sell); an unknown session is 404;
- `?wait` above 10 s is capped at 10; a `wait` that is not a number >= 0 is 400;
- payment and cancel wait up to `?wait` (default 10 s) for inventory's outcome and answer
  202 with the order if none came by then;
- a host may omit `host_id` when creating a session (it is their own `sub`); an admin must
  give it; a host naming another host is 403.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from services.common.openapi import Operation, Param, Reply, describe, problem
from services.common.problems import (
    ProblemError,
    bad_request,
    conflict,
    json_response,
    not_found,
    unprocessable,
)
from services.common.schemas import schema as schema_file
from services.common.web_app import (
    PROBLEM_TRANSLATORS,
    SETTINGS,
    principal,
    read_json_body,
    takes_json_body,
)
from services.live_orders.app_keys import USE_CASES, UseCases
from services.live_orders.domain import (
    MAX_WAIT_S,
    Conflict,
    InvalidInput,
    NotFound,
    Order,
    RateLimited,
    is_valid_id,
    is_valid_idempotency_key,
    parse_wait,
)
from services.live_orders.orders import Answer

log = logging.getLogger(__name__)

VERDICT_STATUS = {"done": 200, "refused": 409, "accepted": 202}


def placement_status_code(order: Order) -> int:
    """HTTP status of an answer to `POST .../orders` that reports `order`."""
    if order.status == "reserved":
        return 201
    if order.status == "pending":
        return 202
    if order.status == "rejected":
        return 409
    # A replayed key whose order has moved on (paid, cancelled, expired): here it is.
    return 200


def domain_problem(request: web.Request, exc: Exception) -> ProblemError | None:
    """Domain exceptions -> problem+json (a PROBLEM_TRANSLATOR of the platform middleware)."""
    if isinstance(exc, NotFound):
        return not_found(str(exc))
    if isinstance(exc, InvalidInput):
        return unprocessable(str(exc))
    if isinstance(exc, Conflict):
        return conflict(str(exc))
    if isinstance(exc, (KafkaError, RedisError)):
        # Nothing half-done is lost: an order stored but not published is published by the
        # retry of the same Idempotency-Key; a recorded pay/cancel intent is re-sent by
        # the retry of the same call.
        log.warning("backend unavailable", extra={"path": request.path, "error": repr(exc)})
        return ProblemError(
            503,
            "Service Unavailable",
            "a backend is unavailable; retry with the same Idempotency-Key",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, RateLimited):
        return ProblemError(
            429,
            "Too Many Requests",
            f"too many order attempts; retry in {exc.retry_after_s} s",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    return None


def setup_routes(app: web.Application) -> None:
    app[PROBLEM_TRANSLATORS].append(domain_problem)
    # First: aiohttp tries the routes under one path prefix in the order they were added,
    # a regex each, and placing an order is nearly every request of a sale.
    app.router.add_post("/v1/sessions/{session_id}/orders", place_order)
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_get("/v1/sessions/{session_id}", get_session)
    app.router.add_post("/v1/sessions/{session_id}/start", start_session)
    app.router.add_post("/v1/sessions/{session_id}/end", end_session)
    app.router.add_post("/v1/sessions/{session_id}/listings", add_listing)
    app.router.add_get("/v1/orders/{order_id}", get_order)
    app.router.add_post("/v1/orders/{order_id}/payment", pay_order)
    app.router.add_post("/v1/orders/{order_id}/cancel", cancel_order)
    describe(app, OPERATIONS, ANSWER_SCHEMAS)


# ------------------------------------------------------------------ OpenAPI (/openapi.json)

_SESSION_EVENT = schema_file("events/session.updated.v1.json")
ANSWER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Session": {k: v for k, v in _SESSION_EVENT.items() if k not in ("$schema", "$id", "title")},
    "Listing": _SESSION_EVENT["properties"]["listings"]["items"],
    "Order": {
        "type": "object",
        "description": "An order as its buyer sees it; `status` is its state.",
        "required": ["order_id", "status"],
        "properties": {
            "order_id": {"type": "string"},
            "status": {"enum": ["pending", "reserved", "rejected", "paid", "cancelled", "expired"]},
            "session_id": {"type": "string"},
            "sku": {"type": "string"},
            "quantity": {"type": "integer"},
            "unit_price_cents": {"type": "integer"},
            "total_cents": {"type": "integer"},
            "expires_at": {"type": ["string", "null"]},
            "placed_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "reason": {"enum": ["sold_out", "limit_exceeded", "not_on_sale"]},
            "payment_ref": {"type": "string"},
        },
    },
}

_WAIT = Param(
    "wait",
    "query",
    {"type": "number", "minimum": 0},
    "seconds to wait for a decision (above 10 is capped at 10; not a number: 400)",
)
_UNAVAILABLE = problem("Kafka or Redis unavailable; retry (the same key)", "Retry-After")
_BAD_WAIT = problem("`wait` is not a number of seconds >= 0")
_NO_SESSION = problem("no such session, or not the caller's")
_NO_ORDER = problem("no such order, or not the caller's")
_WRONG_ROLE = problem("the caller's role may not do this")


def _order(description: str) -> Reply:
    return Reply(description, "Order")


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/sessions/{session_id}/orders"): Operation(
        "Place an order",
        {
            200: _order("a replayed key whose order moved on (paid, cancelled, expired)"),
            201: _order("reserved"),
            202: _order("pending: no decision within `wait`"),
            400: problem("missing or malformed Idempotency-Key, bad `wait`, body not JSON"),
            403: _WRONG_ROLE,
            404: _NO_SESSION,
            409: _order("rejected (`reason`: sold_out, limit_exceeded, not_on_sale)"),
            422: problem("invalid body, sku not listed, quantity over the limit, key reused"),
            429: problem("the buyer's token bucket is empty", "Retry-After"),
            503: _UNAVAILABLE,
        },
        roles=("buyer",),
        body="order-place",
        params=(
            Param(
                "Idempotency-Key",
                "header",
                {"type": "string", "pattern": "^[!-~]{1,255}$"},
                "1-255 printable ASCII characters; scoped per buyer",
                required=True,
            ),
            Param("wait", "query", _WAIT.schema, "seconds to wait for a decision (default 2)"),
        ),
    ),
    ("POST", "/v1/sessions"): Operation(
        "Create a session",
        {
            201: Reply("the session", "Session"),
            403: problem("wrong role, or a host naming another host"),
            422: problem("invalid body, or an admin without host_id"),
            503: _UNAVAILABLE,
        },
        roles=("host", "admin"),
        body="session-create",
    ),
    ("GET", "/v1/sessions/{session_id}"): Operation(
        "A session with its listings",
        {200: Reply("the session", "Session"), 404: _NO_SESSION, 503: _UNAVAILABLE},
    ),
    ("POST", "/v1/sessions/{session_id}/start"): Operation(
        "Start a session (again: unchanged)",
        {
            200: Reply("the session", "Session"),
            403: _WRONG_ROLE,
            404: _NO_SESSION,
            409: problem("the session has ended"),
            503: _UNAVAILABLE,
        },
        roles=("host", "admin"),
    ),
    ("POST", "/v1/sessions/{session_id}/end"): Operation(
        "End a session (again: unchanged)",
        {
            200: Reply("the session", "Session"),
            403: _WRONG_ROLE,
            404: _NO_SESSION,
            409: problem("the session never started"),
            503: _UNAVAILABLE,
        },
        roles=("host", "admin"),
    ),
    ("POST", "/v1/sessions/{session_id}/listings"): Operation(
        "List a sku in a session",
        {
            201: Reply("the listing", "Listing"),
            403: _WRONG_ROLE,
            404: _NO_SESSION,
            409: problem("the sku is listed already, or the session has ended"),
            422: problem("invalid body or sale window"),
            503: _UNAVAILABLE,
        },
        roles=("host", "admin"),
        body="listing-create",
    ),
    ("GET", "/v1/orders/{order_id}"): Operation(
        "An order (long-polls while pending)",
        {
            200: _order("the order"),
            400: _BAD_WAIT,
            403: _WRONG_ROLE,
            404: _NO_ORDER,
            503: _UNAVAILABLE,
        },
        roles=("buyer", "admin"),
        params=(_WAIT,),
    ),
    ("POST", "/v1/orders/{order_id}/payment"): Operation(
        "Pay an order",
        {
            200: _order("paid"),
            202: _order("no outcome from inventory within `wait`"),
            400: problem("the body is empty or not JSON, or a bad `wait`"),
            403: _WRONG_ROLE,
            404: _NO_ORDER,
            409: _order("not payable (`status` says why), or paid with another payment_ref"),
            422: problem("invalid body, or amount_cents is not the order's total"),
            503: _UNAVAILABLE,
        },
        roles=("payments", "admin"),
        body="payment",
        params=(Param("wait", "query", _WAIT.schema, "seconds to wait (default 10)"),),
    ),
    ("POST", "/v1/orders/{order_id}/cancel"): Operation(
        "Cancel an order (again: 200)",
        {
            200: _order("cancelled"),
            202: _order("no outcome from inventory within `wait`"),
            400: _BAD_WAIT,
            403: _WRONG_ROLE,
            404: _NO_ORDER,
            409: _order("paid or otherwise final, or its placement not yet published"),
            503: _UNAVAILABLE,
        },
        roles=("buyer", "admin"),
        params=(Param("wait", "query", _WAIT.schema, "seconds to wait (default 10)"),),
    ),
}


def _use_cases(request: web.Request) -> UseCases:
    return request.app[USE_CASES]


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not is_valid_id(value):
        raise not_found(f"no such {name.removesuffix('_id')}")
    return value


def _wait(request: web.Request, default: float) -> float:
    try:
        return parse_wait(request.query.get("wait"), default)
    except ValueError as exc:
        raise bad_request(f"wait must be a number of seconds between 0 and {MAX_WAIT_S:g}") from exc


# ---------------------------------------------------------------------------- sessions


@takes_json_body
async def create_session(request: web.Request) -> web.Response:
    who = principal(request, "host", "admin")
    body = await read_json_body(request, "session-create")
    host_id = body.get("host_id")
    if who.is_admin:
        if host_id is None:
            raise unprocessable("host_id is required when an admin creates a session")
    elif host_id is not None and host_id != who.sub:
        raise ProblemError(403, "Forbidden", "a host creates sessions only for themselves")
    else:
        host_id = who.sub
    session = await _use_cases(request).sessions.create(
        host_id, body["title"], body.get("pavilion")
    )
    return json_response(session.to_message(), status=201)


async def get_session(request: web.Request) -> web.Response:
    principal(request)
    session = await _use_cases(request).sessions.get(_path_id(request, "session_id"))
    return json_response(session.to_message())


async def start_session(request: web.Request) -> web.Response:
    return await _move_session(request, "start")


async def end_session(request: web.Request) -> web.Response:
    return await _move_session(request, "end")


async def _move_session(request: web.Request, action: str) -> web.Response:
    who = principal(request, "host", "admin")
    session_id = _path_id(request, "session_id")
    session = await _use_cases(request).sessions.move(session_id, action, who)
    return json_response(session.to_message())


@takes_json_body
async def add_listing(request: web.Request) -> web.Response:
    who = principal(request, "host", "admin")
    session_id = _path_id(request, "session_id")
    sessions = _use_cases(request).sessions
    # Ownership before the body: another host learns nothing, not even what is invalid.
    await sessions.get_managed(session_id, who)
    body = await read_json_body(request, "listing-create")
    listing = await sessions.add_listing(session_id, body, who)
    return json_response(listing.to_message(), status=201)


# ------------------------------------------------------------------------------ orders


@takes_json_body
async def place_order(request: web.Request) -> web.Response:
    who = principal(request, "buyer")
    session_id = _path_id(request, "session_id")
    key = request.headers.get("Idempotency-Key")
    if key is None or not key.strip():
        raise bad_request("the Idempotency-Key header is required")
    if not is_valid_idempotency_key(key):
        raise bad_request("Idempotency-Key must be 1-255 printable ASCII characters")
    wait_s = _wait(request, request.app[SETTINGS].order_wait_default_s)
    body = await read_json_body(request, "order-place")
    order = await _use_cases(request).orders.place(
        buyer_id=who.sub,
        session_id=session_id,
        idempotency_key=key,
        sku=body["sku"],
        quantity=body["quantity"],
        wait_s=wait_s,
    )
    return json_response(order.to_public(), status=placement_status_code(order))


async def get_order(request: web.Request) -> web.Response:
    who = principal(request, "buyer", "admin")
    order_id = _path_id(request, "order_id")
    order = await _use_cases(request).orders.get(order_id, who, _wait(request, 0.0))
    return json_response(order.to_public())


@takes_json_body
async def pay_order(request: web.Request) -> web.Response:
    principal(request, "payments", "admin")
    order_id = _path_id(request, "order_id")
    wait_s = _wait(request, MAX_WAIT_S)
    body = await read_json_body(request, "payment")
    answer = await _use_cases(request).orders.pay(
        order_id, payment_ref=body["payment_ref"], amount_cents=body["amount_cents"], wait_s=wait_s
    )
    return _answer(answer)


async def cancel_order(request: web.Request) -> web.Response:
    who = principal(request, "buyer", "admin")
    order_id = _path_id(request, "order_id")
    answer = await _use_cases(request).orders.cancel(order_id, who, _wait(request, MAX_WAIT_S))
    return _answer(answer)


def _answer(answer: Answer) -> web.Response:
    return json_response(answer.order.to_public(), status=VERDICT_STATUS[answer.verdict])
