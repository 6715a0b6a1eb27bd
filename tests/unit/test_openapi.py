"""Every route of every service is in its OpenAPI 3.1 document (`GET /openapi.json`),
and the documents are valid: built from the apps as `create_app` makes them (no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from services.common.openapi import (
    API_DESCRIPTION,
    Operation,
    UndescribedRoute,
    openapi_document,
    route_key,
)
from services.common.schemas import schema
from services.common.settings import Settings
from services.inventory.app import create_app as create_inventory
from services.live_orders.app import create_app as create_live_orders
from services.notifier.app import create_app as create_notifier
from tests.conftest import Backends, settings_for

APPS: dict[str, Callable[[Settings], web.Application]] = {
    "live_orders": create_live_orders,
    "inventory": create_inventory,
    "notifier": create_notifier,
}
NOWHERE = Backends("127.0.0.1:1", "redis://127.0.0.1:1/0", 1, Path("/nonexistent"))


def build(service: str) -> web.Application:
    return APPS[service](settings_for(NOWHERE, "t.", service))


@pytest.fixture(params=sorted(APPS))
def service(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_every_route_is_described(service: str) -> None:
    app = build(service)
    document = openapi_document(app)
    routes = list(app.router.routes())
    assert len(routes) > 6
    for route in routes:
        method, path = route_key(route)
        operation = document["paths"].get(path, {}).get(method.lower())
        assert operation is not None, f"{method} {path} is not in {service}'s document"
        assert operation["summary"] and operation["responses"], (method, path)
        # Every path parameter of the route is declared, as required.
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert declared == set(_path_names(path)), (method, path)
    described = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert described == {route_key(r) for r in routes}, "no operation without a route"


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def test_documents_are_valid_openapi_3_1(service: str) -> None:
    document = openapi_document(build(service))
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }


def test_error_answers_are_problem_documents(service: str) -> None:
    document = openapi_document(build(service))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and method != "head":
                    content = answer.get("content", {})
                    # DESIGN 4.2: answers that report an order's state, the 409s too,
                    # are the order itself; the trace page's 404 is a page.
                    is_order = content.get("application/json", {}).get("schema") == {
                        "$ref": "#/components/schemas/Order"
                    }
                    assert (
                        "application/problem+json" in content
                        or (is_order and status == "409")
                        or (path.startswith("/trace/") and status == "404")
                    ), (method, path, status)


def test_public_and_protected_routes_say_so() -> None:
    paths = openapi_document(build("notifier"))["paths"]
    assert paths["/v1/trace/{trace_code}"]["get"]["security"] == []
    assert paths["/openapi.json"]["get"]["security"] == []
    assert paths["/v1/picks/{pick_id}/complete"]["post"]["security"] == [{"bearerAuth": []}]
    assert paths["/v1/picks/{pick_id}/complete"]["post"]["x-roles"] == ["warehouse", "admin"]
    assert "401" in paths["/v1/picks/{pick_id}/complete"]["post"]["responses"]
    assert "401" not in paths["/healthz"]["get"]["responses"]
    assert paths["/v1/sessions/{session_id}/live"]["get"]["x-websocket"] is True


REQUEST_BODIES = {
    ("live_orders", "post", "/v1/sessions"): "session-create",
    ("live_orders", "post", "/v1/sessions/{session_id}/listings"): "listing-create",
    ("live_orders", "post", "/v1/sessions/{session_id}/orders"): "order-place",
    ("live_orders", "post", "/v1/orders/{order_id}/payment"): "payment",
    ("inventory", "put", "/v1/skus/{sku}/lots/{lot_code}"): "lot-upsert",
}


def test_request_bodies_are_the_schemas_of_schemas_http() -> None:
    found = {}
    for service in APPS:
        document = openapi_document(build(service))
        components = document["components"]["schemas"]
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if "requestBody" not in operation:
                    continue
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                body: dict[str, Any] = components[ref.rsplit("/", 1)[1]]
                found[(service, method, path)] = body
    assert found.keys() == REQUEST_BODIES.keys()
    for key, name in REQUEST_BODIES.items():
        source = schema(f"http/{name}.json")
        assert found[key]["properties"] == source["properties"], key
        assert found[key]["required"] == source["required"], key
        assert found[key]["additionalProperties"] is False


def test_a_route_without_a_description_fails_the_build() -> None:
    app = build("inventory")

    async def undocumented(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/undocumented", undocumented)
    with pytest.raises(UndescribedRoute, match="GET /v1/undocumented"):
        openapi_document(app)


def test_a_description_without_its_route_fails_the_build() -> None:
    app = build("inventory")
    app[API_DESCRIPTION].describe({("GET", "/v1/gone"): Operation("gone", {})})
    with pytest.raises(UndescribedRoute, match="/v1/gone"):
        openapi_document(app)
