"""HTTP routes of inventory (DESIGN 4.4). Handlers only translate: request -> store call
-> answer; the rules live in the Lua scripts behind StockStore."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from aiohttp import web

from services.common.clock import now_rfc3339
from services.common.events import Outgoing
from services.common.openapi import Operation, Reply, describe, problem
from services.common.problems import conflict, json_response, not_found, unprocessable
from services.common.web_app import (
    PUBLISHER,
    SETTINGS,
    TOPICS,
    principal,
    read_json_body,
    takes_json_body,
)
from services.inventory import outcome_events
from services.inventory.app_keys import JOURNAL_STORE, STOCK_STORE
from services.inventory.domain import Lot, LotInput
from services.inventory.lot_journal import LotJournalView, check_chain, received_data


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/skus/{sku}/lots/{lot_code}", put_lot)
    app.router.add_get("/v1/skus/{sku}", get_sku)
    app.router.add_get("/v1/skus/{sku}/lots/{lot_code}/journal", get_journal)
    app.router.add_get("/v1/skus/{sku}/lots/{lot_code}/journal/verify", verify_journal)
    describe(app, OPERATIONS, ANSWER_SCHEMAS)


# ------------------------------------------------------------------ OpenAPI (/openapi.json)

_NULLABLE_TEXT = {"type": ["string", "null"]}
_LOT = {
    "type": "object",
    "required": ["lot_code", "warehouse_id", "quantity", "allocated", "expires_on"],
    "properties": {
        "lot_code": {"type": "string"},
        "warehouse_id": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 0},
        "allocated": {"type": "integer", "minimum": 0},
        "expires_on": _NULLABLE_TEXT,
        "origin": _NULLABLE_TEXT,
        "producer": _NULLABLE_TEXT,
        "harvested_on": _NULLABLE_TEXT,
        "inspection": _NULLABLE_TEXT,
    },
}
_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
ANSWER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Lot": _LOT,
    "LotOfSku": {**_LOT, "required": ["sku", *_LOT["required"]]},
    "Sku": {
        "type": "object",
        "required": ["sku", "received", "available", "reserved", "sold", "lots"],
        "properties": {
            "sku": {"type": "string"},
            **{
                name: {"type": "integer", "minimum": 0}
                for name in ("received", "available", "reserved", "sold")
            },
            "lots": {"type": "array", "items": {"$ref": "#/components/schemas/Lot"}},
        },
    },
    "Journal": {
        "type": "object",
        "required": ["entries", "head"],
        "properties": {
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["seq", "type", "at", "data", "prev_hash", "hash"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 1},
                        "type": {"type": "string"},
                        "at": {"type": "string"},
                        "data": {"type": "object"},
                        "prev_hash": _HASH,
                        "hash": _HASH,
                    },
                },
            },
            "head": _HASH,
        },
    },
    "JournalCheck": {
        "type": "object",
        "required": ["ok", "entries", "first_bad_seq"],
        "properties": {
            "ok": {"type": "boolean"},
            "entries": {"type": "integer", "minimum": 0},
            "first_bad_seq": {"type": ["integer", "null"]},
        },
    },
}

_WRONG_ROLE = problem("the caller's role may not do this")
_NO_LOT = problem("no such lot (or sku)")

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("PUT", "/v1/skus/{sku}/lots/{lot_code}"): Operation(
        "Receive a lot (quantity: its total received units)",
        {
            200: Reply("the lot, updated", "LotOfSku"),
            201: Reply("the lot, created", "LotOfSku"),
            403: _WRONG_ROLE,
            409: problem("lowering the lot below what is allocated, or below what is held"),
            422: problem("invalid body, or a date that is not a calendar date"),
        },
        roles=("admin",),
        body="lot-upsert",
    ),
    ("GET", "/v1/skus/{sku}"): Operation(
        "Stock levels of a sku, with its lots",
        {200: Reply("the sku", "Sku"), 403: _WRONG_ROLE, 404: problem("no such sku")},
        roles=("admin", "host"),
    ),
    ("GET", "/v1/skus/{sku}/lots/{lot_code}/journal"): Operation(
        "A lot's hash-chained journal",
        {200: Reply("the journal, oldest first", "Journal"), 403: _WRONG_ROLE, 404: _NO_LOT},
        roles=("admin", "host"),
    ),
    ("GET", "/v1/skus/{sku}/lots/{lot_code}/journal/verify"): Operation(
        "Check a lot's journal chain",
        {200: Reply("the check", "JournalCheck"), 403: _WRONG_ROLE, 404: _NO_LOT},
        roles=("admin", "host"),
    ),
}


@takes_json_body
async def put_lot(request: web.Request) -> web.Response:
    principal(request, "admin")
    body = await read_json_body(request, "lot-upsert")
    sku = request.match_info["sku"]
    lot_code = request.match_info["lot_code"]
    lot = LotInput(
        lot_code=lot_code,
        warehouse_id=body["warehouse_id"],
        quantity=int(body["quantity"]),
        expires_on=_date(body, "expires_on"),
        # "" is stored as none, so it is journaled as none (null) too.
        origin=body.get("origin") or None,
        producer=body.get("producer") or None,
        harvested_on=_date(body, "harvested_on"),
        inspection=body.get("inspection") or None,
    )
    result = await request.app[STOCK_STORE].upsert_lot(sku, lot)
    if result.lot is None:
        raise conflict(result.detail)
    # Every accepted PUT is a receipt in the lot's journal. The dedup key is this
    # request's own: a Redis call retried after a lost reply appends nothing twice,
    # while a second PUT (even with the same body) is journaled again. A crash between
    # the upsert and this append leaves the change unjournaled; the client saw no 2xx
    # and repeats the PUT (quantities are absolute, so repeating it changes no stock).
    journaled = await request.app[JOURNAL_STORE].append(
        sku,
        lot_code,
        "lot.received",
        at=now_rfc3339(),
        data=received_data(lot),
        dedup_key=f"put:{uuid.uuid4()}",
    )
    # Buyers' sold-out views and hosts' counters follow stock.changed, trace pages follow
    # lot.updated: announce both once the change is in Redis.
    source = request.app[SETTINGS].instance_id
    topic = request.app[TOPICS].inventory
    messages: list[Outgoing] = [
        (topic, sku, outcome_events.stock_changed(sku, result.levels, source))
    ]
    if journaled is not None:
        updated = outcome_events.lot_updated(sku, journaled.lot, journaled.head, source)
        messages.append((topic, sku, updated))
    await request.app[PUBLISHER].publish_many(messages)
    return json_response(
        _lot_body(sku, result.lot), status=201 if result.status == "created" else 200
    )


async def get_sku(request: web.Request) -> web.Response:
    principal(request, "admin", "host")
    sku = request.match_info["sku"]
    view = await request.app[STOCK_STORE].sku_view(sku)
    if view is None:
        raise not_found(f"no sku {sku!r}")
    return json_response(
        {
            "sku": view.sku,
            "received": view.levels.received,
            "available": view.levels.available,
            "reserved": view.levels.reserved,
            "sold": view.levels.sold,
            "lots": [lot_view(lot) for lot in view.lots],
        }
    )


async def get_journal(request: web.Request) -> web.Response:
    principal(request, "admin", "host")
    journal = await _journal(request)
    return json_response(
        {"entries": [entry.as_dict() for entry in journal.entries], "head": journal.head.hash}
    )


async def verify_journal(request: web.Request) -> web.Response:
    principal(request, "admin", "host")
    journal = await _journal(request)
    return json_response(check_chain(journal.entries).as_dict())


async def _journal(request: web.Request) -> LotJournalView:
    sku = request.match_info["sku"]
    lot_code = request.match_info["lot_code"]
    journal = await request.app[JOURNAL_STORE].read(sku, lot_code)
    if journal is None:
        raise not_found(f"no lot {lot_code!r} of sku {sku!r}")
    return journal


def _date(body: dict[str, Any], field: str) -> str | None:
    """A date field of the body, checked to be a calendar date (the schema checks only
    its shape): 422 otherwise."""
    value = body.get(field)
    if value is not None:
        try:
            date.fromisoformat(value)
        except ValueError as exc:
            raise unprocessable(f"{field}: {value!r} is not a calendar date") from exc
    return value


def _lot_body(sku: str, lot: Lot) -> dict[str, Any]:
    return {"sku": sku, **lot_view(lot)}


def lot_view(lot: Lot) -> dict[str, Any]:
    """A lot as the HTTP API answers it."""
    return {
        "lot_code": lot.lot_code,
        "warehouse_id": lot.warehouse_id,
        "quantity": lot.quantity,
        "allocated": lot.allocated,
        "expires_on": lot.expires_on,
        "origin": lot.origin,
        "producer": lot.producer,
        "harvested_on": lot.harvested_on,
        "inspection": lot.inspection,
    }
