"""schemathesis against every service, as processes on the real broker and Redis: each
operation of its `/openapi.json` gets generated requests (valid and invalid ones) and its
path parameters' examples naming real resources (a seeded world), and every answer must be
no 5xx, a documented status, of a documented content type, and valid against the
documented schema.

Skipped (kept in the documents): the WebSocket routes, which schemathesis cannot speak (a
plain GET is a 426, their frames are another protocol; tests/integration/test_notifier_*
and the authorization matrix cover them), and the session's Server-Sent Events, an endless
answer that a checker reading the whole body would wait on forever.

Bounded: a fixed number of examples per operation, no shrinking, derandomized (the same
requests every run, so a failure is reproducible; HYPOTHESIS_SEED=random varies them).
"""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.flash_sale import Endpoints, SaleClient
from services.common.auth import mint_token
from tests.conftest import (
    JWT_SECRET,
    Backends,
    ServiceProcess,
    new_prefix,
    settings_for,
    start_service_process,
    wait_ready,
)
from tests.integration.api_world import BUYER, PAVILION, WAREHOUSE, World, seed_world

pytestmark = pytest.mark.integration

SERVICES = ("inventory", "live_orders", "notifier")
MAX_EXAMPLES = int(os.environ.get("LC_SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
NOT_FUZZED = {"/v1/sessions/{session_id}/events"}  # endless SSE (see above)


@dataclass
class Running:
    urls: dict[str, str]
    documents: dict[str, dict[str, Any]]
    world: World


@pytest.fixture(scope="module")
async def running(
    backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    prefix = new_prefix()
    logs: Path = tmp_path_factory.mktemp("conformance")
    started: list[ServiceProcess] = []
    try:
        for name in SERVICES:
            started.append(start_service_process(settings_for(backends, prefix, name), logs))
        for process in started:
            await wait_ready(process.url, proc=process.proc)
        urls = {p.name: p.url for p in started}
        async with aiohttp.ClientSession() as http:
            client = SaleClient(
                http,
                Endpoints(urls["live_orders"], urls["inventory"], urls["notifier"], JWT_SECRET),
            )
            world = await seed_world(client, urls["notifier"])
            documents = {}
            for name, url in urls.items():
                async with http.get(f"{url}/openapi.json") as response:  # no token
                    assert response.status == 200
                    documents[name] = await response.json()
        yield Running(urls, documents, world)
    finally:
        for process in started:
            process.stop()


def with_examples(document: dict[str, Any], world: World) -> dict[str, Any]:
    """The document with examples of path parameters that name the seeded resources, so
    the explicit phase reaches past the 404s."""
    examples = {
        "session_id": world.session_id,
        "order_id": world.reserved_order_id,
        "sku": world.sku,
        "lot_code": world.lot_code,
        "warehouse_id": WAREHOUSE,
        "pick_id": world.pick_id,
        "pavilion": PAVILION,
        "trace_code": world.trace_code,
        "filename": "host.css",
    }
    document = copy.deepcopy(document)
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation["parameters"]:
                if parameter["in"] == "path":
                    parameter["example"] = examples[parameter["name"]]
    return document


def token_for(operation: dict[str, Any]) -> str:
    """Admin may call nearly everything; placing an order takes a buyer."""
    roles = operation.get("x-roles", [])
    if roles and "admin" not in roles:
        return mint_token(JWT_SECRET, sub=BUYER, role=roles[0])  # type: ignore[arg-type]
    return mint_token(JWT_SECRET, sub="ops", role="admin")


def run_operation(
    operation: schemathesis.APIOperation, base_url: str, headers: dict[str, str]
) -> list[str]:
    """Every failure of the operation (empty: it conforms)."""
    strategies = [
        (False, operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)),
        (True, operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)),
    ]
    strategies += [(False, s) for s in operation.schema.get_strategies_from_examples(operation)]
    session = requests.Session()
    failures: list[str] = []
    for negative, strategy in strategies:

        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=os.environ.get("HYPOTHESIS_SEED") != "random",
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @hypothesis.given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=base_url, session=session, headers=headers, checks=CHECKS, timeout=15
            )

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # Nothing of the request can be made invalid (no parameters, no body).
            if not negative:
                raise
        except Exception as failure:
            failures.append(f"{operation.label}: {failure}")
    session.close()
    return failures


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_answers_as_its_openapi_document_says(running: Running, service: str) -> None:
    raw = with_examples(running.documents[service], running.world)
    schema = schemathesis.openapi.from_dict(raw)
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        source = raw["paths"][operation.path][operation.method.lower()]
        if source.get("x-websocket") or operation.path in NOT_FUZZED:
            continue
        headers = {"Authorization": f"Bearer {token_for(source)}"}
        failures += run_operation(operation, running.urls[service], headers)
        ran += 1
    assert ran >= 8, f"only {ran} operations of {service} were run"
    assert not failures, "\n\n".join(failures)
