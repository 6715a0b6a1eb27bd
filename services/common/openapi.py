"""The OpenAPI 3.1 description of a service, served at `GET /openapi.json`.

Built from the app's router (every method and path, with its path parameters) and the
metadata each service keeps next to its route table (`http_api.py`): summary, roles,
the request body's schema in `schemas/http/`, and the answers it gives with their status
codes and schemas. What the platform answers on every route is added here once: 401 on
routes that need a token, 404 for path ids outside the id grammar, 413 for bodies over the
limit (or any body where none belongs), and the refusals of `read_json_body` on routes
that take a JSON body. A route without a description, or a description of no route,
fails the build (a test builds every service's document), so the two cannot drift apart.

HEAD is described from its GET (aiohttp answers both): the same answers, no bodies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from services.common.identifiers import ID_PATTERN
from services.common.problems import PROBLEM_CONTENT_TYPE
from services.common.schemas import schema as load_schema

API_VERSION = "1.0.0"
BEARER = "bearerAuth"

# How a route knows its caller: a bearer token, none at all, or (WebSockets) either the
# header or a first message carrying the token.
Auth = Literal["bearer", "none", "header-or-first-message"]

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
    },
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: its schema (a `components.schemas` name or an inline JSON
    Schema), its media type, and the headers it carries."""

    description: str
    schema: str | dict[str, Any] | None = None
    media_type: str | tuple[str, ...] = "application/json"
    headers: tuple[str, ...] = ()


def problem(description: str, *headers: str) -> Reply:
    """An error answer: `application/problem+json`."""
    return Reply(description, "Problem", PROBLEM_CONTENT_TYPE, headers)


@dataclass(frozen=True, slots=True)
class Param:
    """A query or header parameter."""

    name: str
    where: Literal["query", "header"]
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """What a route does, who may call it and what it answers (besides the answers every
    route shares, added by `build_document`)."""

    summary: str
    answers: Mapping[int, Reply]
    roles: tuple[str, ...] = ()  # empty: any authenticated caller (when auth is bearer)
    auth: Auth = "bearer"
    body: str | None = None  # a schema of schemas/http, without `.json`
    params: tuple[Param, ...] = ()
    description: str = ""
    websocket: bool = False
    # Path parameters other than ids (which follow the id grammar): name -> JSON Schema.
    path_params: Mapping[str, dict[str, Any]] = field(default_factory=dict)


class UndescribedRoute(LookupError):
    """A route without an Operation, or an Operation without its route."""


@dataclass
class ApiDescription:
    """A service's route metadata, filled by its route setup; the document is built once,
    on first request, from the router as it then is."""

    title: str
    operations: dict[tuple[str, str], Operation] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    built: dict[str, Any] | None = None

    def describe(
        self,
        operations: Mapping[tuple[str, str], Operation],
        schemas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        for key in operations:
            if key in self.operations:
                raise ValueError(f"{key[0]} {key[1]} is described twice")
        self.operations.update(operations)
        self.schemas.update(schemas or {})


API_DESCRIPTION = web.AppKey("api_description", ApiDescription)

_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
# Path parameters that are ids (of the one grammar, services.common.identifiers); others
# (a pavilion's name, a trace code with its own stricter grammar and its own 404 page) are
# their handler's to check.
ID_PARAMETERS = frozenset({"session_id", "order_id", "pick_id", "warehouse_id", "sku", "lot_code"})


def route_key(route: web.AbstractRoute) -> tuple[str, str]:
    """(method, OpenAPI path) of a route: `/assets/` static files as `/assets/{filename}`."""
    resource = route.resource
    assert resource is not None
    path = resource.canonical
    if isinstance(resource, web.StaticResource):
        path = path.rstrip("/") + "/{filename}"
    return route.method, path


def router_keys(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path) the app's router serves, in the router's order."""
    return [route_key(route) for route in app.router.routes() if route.resource is not None]


def build_document(app: web.Application, description: ApiDescription) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app; UndescribedRoute if router and metadata differ."""
    keys = router_keys(app)
    served = set(keys)
    missing = [
        f"{method} {path}"
        for method, path in keys
        if (method, path) not in description.operations
        and not (method == "HEAD" and ("GET", path) in description.operations)
    ]
    if missing:
        raise UndescribedRoute(f"routes without an OpenAPI description: {', '.join(missing)}")
    stale = [f"{m} {p}" for m, p in description.operations if (m, p) not in served]
    if stale:
        raise UndescribedRoute(f"descriptions of routes the app does not serve: {stale}")
    paths: dict[str, dict[str, Any]] = {}
    body_schemas: dict[str, dict[str, Any]] = {}
    for method, path in keys:
        if method == "HEAD" and ("HEAD", path) not in description.operations:
            operation = _operation(path, description.operations[("GET", path)], body_schemas)
            operation = _head_of(operation)
        else:
            operation = _operation(path, description.operations[(method, path)], body_schemas)
        operation["operationId"] = _operation_id(method, path)
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": description.title,
            "version": API_VERSION,
            "description": (
                "Livestream flash sales: the public contract is DESIGN section 4, the routes "
                "and their rules docs/api.md. Errors are application/problem+json (RFC 9457)."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "HS256 JWT signed with LC_JWT_SECRET; claims sub, role (buyer, host, "
                        "warehouse, payments, admin), exp; warehouse tokens carry warehouse_id."
                    ),
                }
            },
            "schemas": {"Problem": PROBLEM_SCHEMA, **description.schemas, **body_schemas},
        },
    }


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{words}"


def _operation(path: str, op: Operation, body_schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    for name in _PATH_PARAM.findall(path):
        rule = op.path_params.get(name)
        if rule is None:
            rule = (
                {"type": "string", "pattern": ID_PATTERN}
                if name in ID_PARAMETERS
                else {"type": "string", "minLength": 1}
            )
        parameters.append({"name": name, "in": "path", "required": True, "schema": rule})
    for param in op.params:
        parameters.append(
            {
                "name": param.name,
                "in": param.where,
                "required": param.required,
                "description": param.description,
                "schema": param.schema,
            }
        )
    answers: dict[int, Reply] = {}
    if op.auth == "bearer":
        answers[401] = problem("missing, expired or invalid bearer token", "WWW-Authenticate")
    if any(name in ID_PARAMETERS for name in _PATH_PARAM.findall(path)):
        answers[404] = problem("a path id outside the id grammar (or naming nothing)")
    answers[413] = problem(
        "a body over LC_MAX_BODY_BYTES"
        + ("" if op.body else ", or a body on a route that takes none (over 1 KiB or chunked)")
    )
    if op.auth == "bearer":
        answers[503] = problem("Redis or the broker unavailable: retry shortly (Retry-After)")
    if op.body:
        answers[400] = problem("the body is empty or not JSON")
        answers[408] = problem("the body did not arrive within LC_BODY_READ_TIMEOUT_S")
        answers[415] = problem("Content-Type is not JSON (application/json, UTF-8)")
        answers[422] = problem("unknown fields, wrong types or missing required fields")
    answers.update(op.answers)
    roles_text = (
        "no token"
        if op.auth == "none"
        else ("roles: " + ", ".join(op.roles) if op.roles else "any authenticated caller")
    )
    document: dict[str, Any] = {
        "summary": op.summary,
        "description": "\n\n".join(filter(None, [op.description, f"Who: {roles_text}."])),
        "parameters": parameters,
        "responses": {str(status): _answer(answer) for status, answer in sorted(answers.items())},
        "x-roles": list(op.roles),
    }
    if op.auth == "bearer":
        document["security"] = [{BEARER: []}]
    elif op.auth == "none":
        document["security"] = []
    else:
        document["security"] = [{BEARER: []}, {}]
    if op.websocket:
        document["x-websocket"] = True
    if op.body:
        body = dict(load_schema(f"http/{op.body}.json"))
        body.pop("$schema", None)
        body.pop("$id", None)
        name = _schema_name(op.body)
        body_schemas[name] = body
        document["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    return document


def _schema_name(http_schema: str) -> str:
    """`order-place` -> `OrderPlaceBody`."""
    return "".join(part.capitalize() for part in http_schema.split("-")) + "Body"


def _answer(answer: Reply) -> dict[str, Any]:
    document: dict[str, Any] = {"description": answer.description}
    if answer.schema is not None:
        schema = (
            {"$ref": f"#/components/schemas/{answer.schema}"}
            if isinstance(answer.schema, str)
            else answer.schema
        )
        types = (answer.media_type,) if isinstance(answer.media_type, str) else answer.media_type
        document["content"] = {media: {"schema": schema} for media in types}
    if answer.headers:
        document["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
    return document


def _head_of(get: dict[str, Any]) -> dict[str, Any]:
    """The GET operation as HEAD: the same answers, without bodies."""
    head = dict(get)
    head["summary"] = f"{get['summary']} (headers only)"
    head["responses"] = {
        status: {k: v for k, v in answer.items() if k != "content"}
        for status, answer in get["responses"].items()
    }
    return head


def describe(
    app: web.Application,
    operations: Mapping[tuple[str, str], Operation],
    schemas: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """Add a service's route descriptions (and the answer schemas they name)."""
    app[API_DESCRIPTION].describe(operations, schemas)


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The app's document, built on first use (the router is frozen by then)."""
    description = app[API_DESCRIPTION]
    if description.built is None:
        description.built = build_document(app, description)
    return description.built
