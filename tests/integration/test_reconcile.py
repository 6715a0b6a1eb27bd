"""The reconciliation on the real broker and Redis: a sale whose stores agree with the log
finds nothing (exit 0); orders that inventory never decided (it was down) are found
(exit 1) and decided by `--repair` through the same Lua steps, after which live_orders
has them too and nothing is left (exit 0)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.flash_sale import Endpoints, SaleClient
from deploy.local.stack import ROOT
from services.common.settings import Settings
from services.inventory.app import create_app as create_inventory
from services.inventory.reconcile import reconcile
from services.live_orders.app import create_app as create_live_orders
from tests.conftest import JWT_SECRET
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def env_file(settings: Settings, path: Path) -> Path:
    path.write_text(
        "".join(
            f"{key}={value}\n"
            for key, value in {
                "LC_JWT_SECRET": JWT_SECRET,
                "LC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "LC_REDIS_URL": settings.redis_url,
                "LC_TOPIC_PREFIX": settings.topic_prefix,
                "LC_REDIS_PREFIX": settings.redis_prefix,
            }.items()
        )
    )
    return path


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.inventory.reconcile",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_reconcile_finds_undecided_orders_and_repair_decides_them(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    inventory_settings = make_settings("inventory")
    inventory = await run_app(create_inventory, inventory_settings)
    orders = await run_app(create_live_orders, make_settings("live_orders"))
    client = SaleClient(
        http, Endpoints(orders.url, inventory.url, "http://127.0.0.1:1", JWT_SECRET)
    )
    sku = "peach-rec"
    session_id = await client.start_sale(
        sku, units=10, host_id="host-rec", price_cents=500, per_user_limit=3
    )

    async def order(n: int, quantity: int = 1, wait: float = 5) -> Any:
        answer = await client.place_order(
            buyer=f"b{n}", session_id=session_id, sku=sku, quantity=quantity, key=f"k{n}", wait=wait
        )
        return answer

    first = [await order(n, quantity=2) for n in range(3)]
    assert [a.status for a in first] == [201] * 3
    assert (await client.pay(first[0].body["order_id"], 1000, "pay-0")).status == 200
    cancelled = await client.cancel(buyer="b1", order_id=first[1].body["order_id"])
    assert cancelled.status == 200

    async def settled() -> bool:
        states = [
            (await client.order(buyer=f"b{n}", order_id=a.body["order_id"])).body["status"]
            for n, a in enumerate(first)
        ]
        return states == ["paid", "cancelled", "reserved"]

    await eventually(settled, timeout=20, what="paid, cancelled, reserved")
    report = await reconcile(inventory_settings)
    assert report.differences == [], report.differences
    assert report.events_read > 0
    stock = report.log.skus[sku]
    assert (stock.received, stock.available, stock.reserved, stock.sold) == (10, 6, 2, 2)
    env = env_file(inventory_settings, tmp_path / "stack.env")
    code, out = await cli("--env-file", str(env))
    assert (code, "no differences") == (0, out.strip().splitlines()[-1]), out

    # Inventory goes away; live_orders accepts two orders (pending: nobody decides them).
    await inventory.stop()
    pending = [await order(n, wait=0.2) for n in (10, 11)]
    assert [a.status for a in pending] == [202, 202], pending
    report = await reconcile(inventory_settings)
    assert sorted(
        (d.subject, d.field, d.log, d.store, d.repairable) for d in report.differences
    ) == sorted(
        (f"order {a.body['order_id']}", "state", "undecided", "(none)", True) for a in pending
    )
    code, out = await cli("--env-file", str(env))
    assert code == 1 and "undecided" in out, out

    # --repair decides them through the Lua steps and publishes the outcomes: live_orders
    # applies them, and the log, inventory and live_orders agree again.
    code, out = await cli("--env-file", str(env), "--repair")
    assert code == 0, out
    assert f"repair re-applied the log of: {sku}" in out, out
    for n, answer in zip((10, 11), pending, strict=True):
        mine = await client.order(buyer=f"b{n}", order_id=answer.body["order_id"])
        assert mine.body["status"] == "reserved"
    report = await reconcile(inventory_settings)
    assert report.differences == []
    stock = report.log.skus[sku]
    assert (stock.available, stock.reserved, stock.sold) == (4, 4, 2)
    # A second repair finds nothing to do and changes nothing.
    code, out = await cli("--env-file", str(env), "--repair")
    assert code == 0 and "repair re-applied the log of: nothing" in out, out
