"""The host dashboard and the pick console in a real headless Chromium (Debian's), fed
by events published onto the real topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright, expect

from services.common.kafka_topics import Topics
from services.notifier.app import create_app
from tests.conftest import auth, token
from tests.events import data_of, event
from tests.integration.test_notifier_support import (
    Item,
    Sale,
    open_session_socket,
    publisher,
)
from tests.waiting import eventually

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"


def chromium_installed() -> bool:
    return Path(CHROMIUM).exists()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not chromium_installed():
        pytest.skip("Debian's chromium is not installed (make system-deps)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_host_dashboard_follows_a_sale_to_sold_out(
    make_settings: Callable[..., Any],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
    browser: Browser,
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    sale = Sale(
        Topics.with_prefix(settings.topic_prefix),
        session_id,
        "host-7",
        {"crab-gold-001": 60, "tea-longjing-02": 30},
        price_cents=12800,
    )
    skus = list(sale.received)
    async with publisher(settings) as pub:
        await pub.publish_many(sale.session_updated() + sale.all_stock())
        ws = await open_session_socket(http, running.url, session_id, auth("host", "host-7"))
        await ws.close()

        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        page = await context.new_page()
        await page.goto(f"{running.url}/host/{session_id}#token={token('host', 'host-7')}")
        await expect(page.locator("#conn")).to_have_class("conn up")
        assert "token" not in page.url, "the token must leave the address bar"
        await expect(page.locator("#title")).to_contain_text("Hairy crab night")

        # The sale: bursts over a few seconds, payments, then every unit gone.
        for round_ in range(8):
            items: list[Item] = []
            for i in range(12 + 4 * round_):
                items += sale.attempt(skus[i % 2], quantity=1 + i % 2)
            while len(sale.holds) > 6:
                items += sale.settle("committed" if len(sale.holds) % 5 else "released")
            await pub.publish_many(items)
            await asyncio.sleep(0.3)  # paces the simulated sale; not a readiness wait
            if round_ == 2:
                await expect(page.locator('[data-total="attempts"]')).to_have_text(
                    f"{sale.truth.totals['attempts']:,}"
                )
                await expect(page.locator("#soldout")).to_be_hidden()
        while any(sale.available.values()):
            items = []
            for sku in skus:
                if sale.available[sku]:
                    items += sale.attempt(sku, quantity=1)
            await pub.publish_many(items)
        items = []
        while sale.holds:
            items += sale.settle("committed")
        items += sale.attempt(skus[0]) + sale.attempt(skus[1])  # fast-path rejections
        await pub.publish_many(items)

        totals = sale.truth.totals
        await expect(page.locator('[data-total="attempts"]')).to_have_text(
            f"{totals['attempts']:,}"
        )
        await expect(page.locator('[data-total="paid_orders"]').first).to_have_text(
            f"{totals['paid_orders']:,}"
        )
        await expect(page.locator("#soldout")).to_be_visible()
        await expect(page.locator(".sku.out")).to_have_count(2)
        gmv = f"{totals['gmv_cents'] // 100:,}"
        await expect(page.locator("#gmv")).to_contain_text(gmv)
        await page.screenshot(path=str(ARTIFACTS / "host-dashboard.png"), full_page=True)

        phone = await browser.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        phone_page = await phone.new_page()
        await phone_page.goto(f"{running.url}/host/{session_id}#token={token('admin', 'ops')}")
        await expect(phone_page.locator("#soldout")).to_be_visible()
        await expect(phone_page.locator('[data-total="units_sold"]')).to_have_text(
            f"{totals['units_sold']:,}"
        )
        await phone_page.screenshot(path=str(ARTIFACTS / "host-dashboard-phone.png"))
        # The page fits the phone: nothing wider than the screen.
        overflow = await phone_page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0

        # Another host's token is refused and the page says so.
        other = await context.new_page()
        await other.goto(f"{running.url}/host/{session_id}#token={token('host', 'host-8')}")
        await expect(other.locator("#notice")).to_contain_text("may not watch")
        await phone.close()
        await context.close()


async def test_pick_console_completes_a_pick(
    make_settings: Callable[..., Any],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
    browser: Browser,
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    sale = Sale(Topics.with_prefix(settings.topic_prefix), "s-wh", "h", {}, warehouse_id="wh-hz")
    lots = [
        ("crab-gold-001", "HZ-CRAB-1028", "2030-10-30"),
        ("crab-gold-001", "HZ-CRAB-1101", "2030-11-02"),
        ("tea-longjing-02", "LJ-2030-SPRING", None),
    ]
    items = [
        sale.pick_requested(
            f"ord-{uuid.uuid4().hex[:10]}", *lots[i % 3][:2], 1 + i % 3, expires_on=lots[i % 3][2]
        )
        for i in range(7)
    ]
    async with publisher(settings) as pub:
        await pub.publish_many(items)
    staff = auth("warehouse", "staff-1", "wh-hz")

    async def all_open() -> bool:
        async with http.get(f"{running.url}/v1/warehouses/wh-hz/picks", headers=staff) as r:
            return len((await r.json())["picks"]) == 7

    await eventually(all_open, what="7 open picks")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"{running.url}/warehouse/wh-hz#token={token('warehouse', 'staff-1', 'wh-hz')}")
    await expect(page.locator(".pick")).to_have_count(7)
    await expect(page.locator(".wave")).to_have_count(3)
    await expect(page.locator(".wave").first.locator(".lot")).to_have_text("HZ-CRAB-1028")
    target = data_of(items[0][2])["pick_id"]
    row = page.locator(f'.pick[data-pick-id="{target}"]')
    await row.locator(".complete").click()
    await expect(row).to_have_count(0)
    await expect(page.locator(".pick")).to_have_count(6)
    await expect(page.locator("#open-count")).to_have_text("6")
    async with http.get(f"{running.url}/v1/warehouses/wh-hz/picks?status=done", headers=staff) as r:
        assert [p["pick_id"] for p in (await r.json())["picks"]] == [target]
    # A new pick appears without reloading the page.
    late = sale.pick_requested(
        "ord-late", "crab-gold-001", "HZ-CRAB-1028", 2, expires_on="2030-10-30"
    )
    async with publisher(settings) as pub:
        await pub.publish_many([late])
    await expect(page.locator(".pick")).to_have_count(7)
    await page.screenshot(path=str(ARTIFACTS / "warehouse-console.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.screenshot(path=str(ARTIFACTS / "warehouse-console-phone.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 800})
    # After a reload (a reconnect), every still-open task is there again.
    await page.reload()
    await expect(page.locator(".pick")).to_have_count(7)
    await expect(page.locator(f'.pick[data-pick-id="{target}"]')).to_have_count(0)
    await context.close()


async def test_trace_page_on_a_phone_and_the_label_code_on_the_pick_console(
    make_settings: Callable[..., Any],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
    browser: Browser,
) -> None:
    settings = make_settings("notifier")
    running = await run_app(create_app, settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    sale = Sale(
        topics,
        "s-trace",
        "host-1",
        {"crab-gold-001": 10},
        warehouse_id="wh-hz",
        pavilion="阳澄湖馆",
    )
    code = "Hz7Q2mLx9PdR4tWk8vNa"
    items: list[Item] = sale.session_updated() + sale.attempt("crab-gold-001", quantity=2)
    buyer = sale.holds[0].buyer
    items += sale.settle("committed", trace_code=code)
    lot = {
        "sku": "crab-gold-001",
        "lot_code": "LOT-001-A",
        "warehouse_id": "wh-hz",
        "quantity": 60,
        "allocated": 2,
        "expires_on": "2030-11-30",
        "origin": "江苏苏州阳澄湖",
        "producer": "阳澄湖蟹业合作社",
        "harvested_on": "2030-10-20",
        "inspection": "CNAS L1234 合格",
        "journal_seq": 2,
        "journal_head": "ab" * 32,
    }
    items.append((topics.inventory, "crab-gold-001", event("lot.updated", lot)))
    async with publisher(settings) as pub:
        await pub.publish_many(items)

    async def known() -> bool:
        async with http.get(f"{running.url}/v1/trace/{code}") as r:
            return r.status == 200 and (await r.json())["lot"]["origin"] is not None

    await eventually(known, what="the trace with its lot")

    phone = await browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = await phone.new_page()
    await page.goto(f"{running.url}/trace/{code}")
    await expect(page.locator("#sku")).to_have_text("crab-gold-001")
    await expect(page.locator('[data-field="lot.origin"]')).to_have_text("江苏苏州阳澄湖")
    await expect(page.locator('[data-field="lot.producer"]')).to_have_text("阳澄湖蟹业合作社")
    await expect(page.locator('[data-field="lot.harvested_on"]')).to_have_text("2030-10-20")
    await expect(page.locator('[data-field="lot.expires_on"]')).to_have_text("2030-11-30")
    await expect(page.locator('[data-field="session.pavilion"]')).to_have_text("阳澄湖馆")
    await expect(page.locator('[data-field="picked_at"]')).to_have_class("unknown")
    for label in (
        "产地",
        "Origin",
        "生产者",
        "采收日期",
        "检验",
        "保质期至",
        "付款时间",
        "拣货时间",
    ):
        await expect(page.locator("main")).to_contain_text(label)
    await expect(page.locator("#code")).to_have_text(code)
    body = await page.locator("body").inner_text()
    assert buyer not in body and sale.picks[0]["order_id"] not in body
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, "the trace page is wider than the phone"
    await page.screenshot(path=str(ARTIFACTS / "trace-page.png"), full_page=True)
    missing = await page.goto(f"{running.url}/trace/NoSuchCode0000000000")
    assert missing is not None and missing.status == 404
    await expect(page.locator("h1")).to_contain_text("未找到")
    await phone.close()

    # The pick console shows the code printed on the box label.
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    console = await context.new_page()
    await console.goto(
        f"{running.url}/warehouse/wh-hz#token={token('warehouse', 'staff-1', 'wh-hz')}"
    )
    row = console.locator(f'.pick[data-pick-id="{sale.picks[0]["pick_id"]}"]')
    await expect(row.locator(".pick-trace")).to_have_text(code)
    await expect(row.locator(".pick-label")).to_be_visible()
    await console.screenshot(path=str(ARTIFACTS / "warehouse-console-trace.png"))
    await row.locator(".complete").click()
    await expect(row).to_have_count(0)
    await context.close()

    async def picked() -> bool:
        async with http.get(f"{running.url}/v1/trace/{code}") as r:
            return (await r.json())["picked_at"] is not None

    await eventually(picked, what="picked_at after completing on the console")
