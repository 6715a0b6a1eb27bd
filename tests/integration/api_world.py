"""A small world of real resources on a running stack (the three services over HTTP), for
the tests that call every route: sessions of one host, a listed and stocked sku, a paid
order with its pick task and trace code, a reserved order of one buyer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from bench.flash_sale import SaleClient
from tests.waiting import eventually

BUYER, OTHER_BUYER = "buyer-a", "buyer-b"
HOST, OTHER_HOST = "host-a", "host-b"
WAREHOUSE, OTHER_WAREHOUSE = "wh-a", "wh-b"
PAVILION = "Yangcheng Lake"
PRICE_CENTS = 8800


@dataclass(frozen=True)
class World:
    session_id: str  # live, HOST's, lists `sku`
    scheduled_session_id: str  # HOST's, never started
    ending_session_id: str  # HOST's, live (for `end`)
    sku: str
    lot_code: str
    lot_quantity: int
    paid_order_id: str  # BUYER's, paid with `payment_ref`
    payment_ref: str
    reserved_order_id: str  # BUYER's, reserved
    pick_id: str  # the paid order's task in WAREHOUSE
    trace_code: str


async def seed_world(client: SaleClient, notifier_url: str) -> World:
    tag = uuid.uuid4().hex[:8]
    sku, lot_code, quantity = f"crab-{tag}", f"LOT-{tag}", 100
    await client.put_lot(sku, lot_code, warehouse_id=WAREHOUSE, quantity=quantity)
    base = client.endpoints.live_orders
    live = await client.expect(
        "POST",
        f"{base}/v1/sessions",
        role="host",
        sub=HOST,
        json={"title": "Hairy crabs", "pavilion": PAVILION},
        ok=(201,),
    )
    session_id = live["session_id"]
    await client.expect(
        "POST",
        f"{base}/v1/sessions/{session_id}/listings",
        role="host",
        sub=HOST,
        json={"sku": sku, "title": "Crab", "price_cents": PRICE_CENTS, "per_user_limit": 50},
        ok=(201,),
    )
    await client.expect(
        "POST", f"{base}/v1/sessions/{session_id}/start", role="host", sub=HOST, ok=(200,)
    )
    scheduled = await client.create_live_session(
        host_id=HOST, title="Tomorrow", listings=[], start=False
    )
    ending = await client.create_live_session(host_id=HOST, title="Ending", listings=[])

    async def reserve(key: str) -> str:
        placed = await client.place_order(
            buyer=BUYER, session_id=session_id, sku=sku, quantity=1, key=key, wait=10
        )
        assert placed.status == 201, placed.body
        order_id: str = placed.body["order_id"]
        return order_id

    paid_order_id = await reserve(f"paid-{tag}")
    payment_ref = f"psp-{tag}"
    paid = await client.pay(paid_order_id, PRICE_CENTS, payment_ref)
    assert paid.status == 200, paid.body
    reserved_order_id = await reserve(f"held-{tag}")

    admin = client.headers("admin", "ops")

    async def get(path: str) -> Any:
        async with client.http.get(f"{notifier_url}{path}", headers=admin) as response:
            return await response.json() if response.status == 200 else None

    async def pick_with_trace() -> Any:
        page = await get(f"/v1/warehouses/{WAREHOUSE}/picks")
        tasks = [t for t in (page or {}).get("picks", []) if t["order_id"] == paid_order_id]
        return tasks[0] if tasks and tasks[0]["trace_code"] else None

    task = await eventually(pick_with_trace, timeout=30, what="the paid order's pick task")

    async def traced() -> bool:
        order_trace = await get(f"/v1/orders/{paid_order_id}/trace")
        return bool(order_trace and order_trace["traces"]) and (
            await get(f"/v1/trace/{task['trace_code']}") is not None
        )

    await eventually(traced, timeout=30, what="the paid order's trace")
    return World(
        session_id=session_id,
        scheduled_session_id=scheduled["session_id"],
        ending_session_id=ending["session_id"],
        sku=sku,
        lot_code=lot_code,
        lot_quantity=quantity,
        paid_order_id=paid_order_id,
        payment_ref=payment_ref,
        reserved_order_id=reserved_order_id,
        pick_id=task["pick_id"],
        trace_code=task["trace_code"],
    )
