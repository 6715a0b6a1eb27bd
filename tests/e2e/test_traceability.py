"""Field to table, end to end (issue #10, DESIGN 4.6): every service as a process.

Two lots of hairy crabs with their trace fields, in two warehouses; a buyer's order of two
spans both (FEFO); it is paid, and staff complete both picks. Then the order's trace and
each box's public trace show the right farm, dates and pick times, the phone page renders
them, both lots' journals verify, and tampering with one stored journal entry makes
verify name it. An unknown trace code answers 404 and reveals nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import async_playwright, expect

from services.common.clock import from_rfc3339
from services.common.redis_scripts import create_redis
from tests.conftest import (
    Backends,
    ServiceProcess,
    auth,
    new_prefix,
    settings_for,
    start_service_process,
    wait_ready,
)
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "browser" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
SKU = "crab-yc-e2e"
LOTS = {
    # The earlier expiry is allocated first: one unit from each lot for an order of two.
    "YC-2026-A": {
        "warehouse_id": "wh-suzhou",
        "quantity": 1,
        "expires_on": "2030-11-25",
        "origin": "江苏苏州阳澄湖",
        "producer": "阳澄湖蟹业合作社",
        "harvested_on": "2030-10-18",
        "inspection": "CIQ-2030-0815 合格",
    },
    "YC-2026-B": {
        "warehouse_id": "wh-kunshan",
        "quantity": 5,
        "expires_on": "2030-11-30",
        "origin": "江苏昆山巴城",
        "producer": "巴城湖蟹养殖场",
        "harvested_on": "2030-10-20",
        "inspection": "CIQ-2030-0902 合格",
    },
}
BUYER = "buyer-trace"
ADMIN = auth("admin", "ops")


@dataclass
class Stack:
    prefix: str
    backends: Backends
    live_orders: ServiceProcess
    inventory: ServiceProcess
    notifier: ServiceProcess
    http: aiohttp.ClientSession

    async def call(
        self, method: str, url: str, headers: dict[str, str] | None = None, json: Any = None
    ) -> tuple[int, Any]:
        async with self.http.request(method, url, headers=headers or {}, json=json) as response:
            body = await response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, orjson.loads(body) if "json" in kind and body else body


@pytest.fixture(scope="module")
async def stack(
    backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    prefix = new_prefix()
    log_dir = tmp_path_factory.mktemp("trace")
    procs = [
        start_service_process(settings_for(backends, prefix, name), log_dir)
        for name in ("live_orders", "inventory", "notifier")
    ]
    try:
        for proc in procs:
            await wait_ready(proc.url, proc=proc.proc)
        async with aiohttp.ClientSession() as http:
            yield Stack(prefix, backends, *procs, http)
    finally:
        for proc in procs:
            proc.stop()


async def sell_and_pick(stack: Stack) -> tuple[str, dict[str, dict[str, Any]]]:
    """Stock, sell, pay and pick one order over both lots: the order id and its picks by
    lot code (as the warehouse saw them, with the completion time)."""
    inventory, orders = stack.inventory.url, stack.live_orders.url
    for lot_code, lot in LOTS.items():
        status, _ = await stack.call(
            "PUT", f"{inventory}/v1/skus/{SKU}/lots/{lot_code}", ADMIN, lot
        )
        assert status == 201
    host = auth("host", "host-yc")
    status, session = await stack.call(
        "POST", f"{orders}/v1/sessions", host, {"title": "阳澄湖大闸蟹专场", "pavilion": "特产馆"}
    )
    assert status == 201
    sid = session["session_id"]
    listing = {"sku": SKU, "title": "大闸蟹 4两", "price_cents": 8800, "per_user_limit": 2}
    assert (await stack.call("POST", f"{orders}/v1/sessions/{sid}/listings", host, listing))[
        0
    ] == 201
    assert (await stack.call("POST", f"{orders}/v1/sessions/{sid}/start", host))[0] == 200
    buyer = {**auth("buyer", BUYER), "Idempotency-Key": "trace-order-1"}
    status, order = await stack.call(
        "POST", f"{orders}/v1/sessions/{sid}/orders?wait=5", buyer, {"sku": SKU, "quantity": 2}
    )
    assert status == 201, order
    payment = {"payment_ref": "psp-trace-1", "amount_cents": 17600}
    status, paid = await stack.call(
        "POST",
        f"{orders}/v1/orders/{order['order_id']}/payment?wait=5",
        auth("payments", "psp"),
        payment,
    )
    assert status == 200 and paid["status"] == "paid", paid

    picks: dict[str, dict[str, Any]] = {}
    for lot_code, lot in LOTS.items():
        staff = auth("warehouse", f"staff-{lot['warehouse_id']}", lot["warehouse_id"])
        url = f"{stack.notifier.url}/v1/warehouses/{lot['warehouse_id']}/picks"

        async def opened(url: str = url, staff: dict[str, str] = staff) -> bool:
            status, body = await stack.call("GET", url, staff)
            return status == 200 and len(body["picks"]) == 1

        await eventually(opened, what=f"the pick of {lot_code}")
        _, body = await stack.call("GET", url, staff)
        pick = body["picks"][0]
        assert pick["lot_code"] == lot_code and pick["quantity"] == 1
        complete = f"{stack.notifier.url}/v1/picks/{pick['pick_id']}/complete"
        status, done = await stack.call("POST", complete, staff)
        assert status == 200, done
        assert done["status"] == "done" and done["completed_at"]
        picks[lot_code] = {**pick, "completed_at": done["completed_at"]}
    return order["order_id"], picks


async def test_a_box_traces_from_the_field_to_the_table(stack: Stack) -> None:
    order_id, picks = await sell_and_pick(stack)
    codes = {lot_code: pick["trace_code"] for lot_code, pick in picks.items()}
    assert len(set(codes.values())) == 2
    assert all(code.isalnum() and len(code) >= 16 for code in codes.values())

    heads: dict[str, str] = {}
    for lot_code in LOTS:
        url = f"{stack.inventory.url}/v1/skus/{SKU}/lots/{lot_code}/journal"
        status, journal = await stack.call("GET", url, ADMIN)
        assert status == 200
        # Received, allocated to the order, picked: in that order, chained.
        heads[lot_code] = journal["head"]

        async def journaled(url: str = url) -> bool:
            _, journal = await stack.call("GET", url, ADMIN)
            return [e["type"] for e in journal["entries"]] == [
                "lot.received",
                "lot.allocated",
                "lot.picked",
            ]

        await eventually(journaled, what=f"{lot_code}'s journal")
        _, journal = await stack.call("GET", url, ADMIN)
        heads[lot_code] = journal["head"]
        status, check = await stack.call("GET", f"{url}/verify", ADMIN)
        assert (status, check) == (200, {"ok": True, "entries": 3, "first_bad_seq": None})

    # The buyer's order trace: one trace per box, with the farm, dates and pick times.
    async def traced() -> bool:
        status, body = await stack.call(
            "GET", f"{stack.notifier.url}/v1/orders/{order_id}/trace", auth("buyer", BUYER)
        )
        return (
            status == 200
            and len(body["traces"]) == 2
            and all(t["picked_at"] and t["journal_head"] in heads.values() for t in body["traces"])
            and {t["journal_head"] for t in body["traces"]} == set(heads.values())
        )

    await eventually(traced, timeout=20, what="the order's trace with both picks and journals")
    _, order_trace = await stack.call(
        "GET", f"{stack.notifier.url}/v1/orders/{order_id}/trace", auth("buyer", BUYER)
    )
    assert order_trace["order_id"] == order_id
    by_code = {t["trace_code"]: t for t in order_trace["traces"]}
    assert set(by_code) == set(codes.values())
    for lot_code, lot in LOTS.items():
        trace = by_code[codes[lot_code]]
        assert trace["sku"] == SKU and trace["quantity"] == 1
        assert trace["lot"] == {
            "lot_code": lot_code,
            "warehouse_id": lot["warehouse_id"],
            "origin": lot["origin"],
            "producer": lot["producer"],
            "harvested_on": lot["harvested_on"],
            "expires_on": lot["expires_on"],
            "inspection": lot["inspection"],
        }
        assert trace["session"]["title"] == "阳澄湖大闸蟹专场"
        assert trace["session"]["pavilion"] == "特产馆"
        assert trace["journal_head"] == heads[lot_code]
        paid_at = from_rfc3339(trace["paid_at"])
        picked_at = from_rfc3339(trace["picked_at"])
        assert paid_at <= picked_at
        assert picked_at == from_rfc3339(picks[lot_code]["completed_at"])

        # The box label's public trace: the same, for anyone, and nothing of the buyer.
        status, public = await stack.call(
            "GET", f"{stack.notifier.url}/v1/trace/{trace['trace_code']}"
        )
        assert status == 200 and public == trace
        text = orjson.dumps(public).decode()
        for secret in (BUYER, order_id, "psp-trace-1"):
            assert secret not in text

    # Someone else's buyer token learns nothing of the order.
    status, _ = await stack.call(
        "GET", f"{stack.notifier.url}/v1/orders/{order_id}/trace", auth("buyer", "someone-else")
    )
    assert status == 404

    # An unknown code: 404, the same answer as a malformed one.
    unknown = await stack.call("GET", f"{stack.notifier.url}/v1/trace/NoSuchCode0000000000")
    malformed = await stack.call("GET", f"{stack.notifier.url}/v1/trace/no")
    assert unknown[0] == malformed[0] == 404
    assert unknown[1]["detail"] == malformed[1]["detail"]

    # The phone page renders the farm, the dates and the pick time.
    code = codes["YC-2026-A"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            phone = await browser.new_context(
                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
            )
            page = await phone.new_page()
            await page.goto(f"{stack.notifier.url}/trace/{code}")
            lot = LOTS["YC-2026-A"]
            for field in ("origin", "producer", "harvested_on", "expires_on", "inspection"):
                await expect(page.locator(f'[data-field="lot.{field}"]')).to_have_text(
                    str(lot[field])
                )
            await expect(page.locator('[data-field="picked_at"]')).not_to_have_class("unknown")
            body = await page.locator("body").inner_text()
            assert BUYER not in body and order_id not in body
            await page.screenshot(path=str(ARTIFACTS / "trace-page-e2e.png"), full_page=True)
        finally:
            await browser.close()

    # Tampering with one stored journal entry: verify names it.
    redis = create_redis(stack.backends.redis_url)
    try:
        key = f"{stack.prefix}inv:{{{SKU}}}:journal:YC-2026-B"
        stored = orjson.loads(await redis.lindex(key, 1))
        stored["data"]["quantity"] = 2  # "allocated two units", where one was
        await redis.lset(key, 1, orjson.dumps(stored))
    finally:
        await redis.aclose(close_connection_pool=True)
    url = f"{stack.inventory.url}/v1/skus/{SKU}/lots/YC-2026-B/journal/verify"
    status, check = await stack.call("GET", url, ADMIN)
    assert (status, check["ok"], check["first_bad_seq"]) == (200, False, stored["seq"])
