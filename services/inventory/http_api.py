"""HTTP routes of inventory (DESIGN 4.4). Handlers only translate: request -> store call
-> answer; the rules live in the Lua scripts behind StockStore."""

from __future__ import annotations

from datetime import date
from typing import Any

from aiohttp import web

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
from services.inventory.app_keys import STOCK_STORE
from services.inventory.domain import Lot, LotInput


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/skus/{sku}/lots/{lot_code}", put_lot)
    app.router.add_get("/v1/skus/{sku}", get_sku)


@takes_json_body
async def put_lot(request: web.Request) -> web.Response:
    principal(request, "admin")
    body = await read_json_body(request, "lot-upsert")
    sku = request.match_info["sku"]
    lot_code = request.match_info["lot_code"]
    expires_on = body.get("expires_on")
    if expires_on is not None:
        try:
            date.fromisoformat(expires_on)
        except ValueError as exc:
            raise unprocessable(f"expires_on: {expires_on!r} is not a calendar date") from exc
    result = await request.app[STOCK_STORE].upsert_lot(
        sku,
        LotInput(
            lot_code=lot_code,
            warehouse_id=body["warehouse_id"],
            quantity=int(body["quantity"]),
            expires_on=expires_on,
            origin=body.get("origin"),
        ),
    )
    if result.lot is None:
        raise conflict(result.detail)
    # Buyers' sold-out views and hosts' counters follow stock.changed: announce the new
    # totals once the change is in Redis.
    settings = request.app[SETTINGS]
    await request.app[PUBLISHER].publish(
        request.app[TOPICS].inventory,
        sku,
        outcome_events.stock_changed(sku, result.levels, settings.instance_id),
    )
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
    }
