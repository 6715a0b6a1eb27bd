"""`make demo`: a simulated live flash sale against the running stack.

A host puts 300 boxes of Yangcheng Lake hairy crabs on air, a few thousand virtual viewers
press *buy* within seconds, most winners pay, a few cancel. The script prints where to
watch (host dashboard, warehouse console), a progress bar while the sale runs, and then
the outcome with the invariant checks.

    python -m bench.demo --env-file .run/stack.env [--buyers 3000 --attempts 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.flash_sale import (
    BurstResult,
    Endpoints,
    SaleClient,
    pay_orders,
    run_burst,
    text_progress,
)
from deploy.local.stack import read_env_file

WAREHOUSES = ("wh-suzhou", "wh-hangzhou")


async def host_snapshot(client: SaleClient, session_id: str, host_id: str) -> dict[str, Any] | None:
    """The first snapshot the host's live view sends (None if the notifier has none)."""
    url = client.endpoints.notifier.replace("http", "ws", 1) + f"/v1/sessions/{session_id}/live"
    try:
        async with client.http.ws_connect(
            url,
            headers=client.headers("host", host_id),
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        ) as ws:
            message = await ws.receive(timeout=5)
            if message.type == aiohttp.WSMsgType.TEXT:
                snapshot: dict[str, Any] = orjson.loads(message.data)
                return snapshot
    except (aiohttp.ClientError, TimeoutError):
        return None
    return None


async def first_box(client: SaleClient, warehouse_id: str) -> dict[str, Any] | None:
    """A pick task of the warehouse (what its label shows), waiting up to 5 s for one."""
    url = f"{client.endpoints.notifier}/v1/warehouses/{warehouse_id}/picks?limit=1"
    token = client.token("warehouse", f"staff-{warehouse_id}", warehouse_id)
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = await client.call("GET", url, headers=headers)
        picks = answer.body.get("picks") if isinstance(answer.body, dict) else None
        if picks:
            box: dict[str, Any] = picks[0]
            return box
        await asyncio.sleep(0.25)
    return None


def view_agrees(snapshot: dict[str, Any] | None, stock: dict[str, Any]) -> bool:
    view = (snapshot or {}).get("skus", {}).get(stock["sku"], {})
    return bool(view) and all(view.get(k) == stock[k] for k in ("available", "reserved", "sold"))


def print_outcome(
    result: BurstResult,
    *,
    paid: int,
    cancelled: int,
    stock: dict[str, Any],
    limit: int,
    snapshot: dict[str, Any] | None,
) -> bool:
    statuses = result.statuses()
    reasons = result.reasons()
    reserved_units = sum(a.quantity for a in result.reserved())
    sold_out = result.sold_out_after()
    per_buyer = result.units_by_buyer()
    worst = max(per_buyer.values(), default=0)
    conserved = stock["available"] + stock["reserved"] + stock["sold"] == stock["received"]
    print()
    print("  Outcome")
    print(
        f"    attempts            {len(result.attempts):>8}   in {result.finished - result.started:.1f}s"
    )
    print(f"    reserved (201)      {statuses[201]:>8}   orders, {reserved_units} units")
    print(f"    sold out (409)      {reasons['sold_out']:>8}")
    print(f"    over limit (409)    {reasons['limit_exceeded']:>8}")
    print(f"    rate limited (429)  {statuses[429]:>8}")
    print(f"    server errors (5xx) {sum(n for s, n in statuses.items() if s >= 500):>8}")
    print(f"    paid                {paid:>8}")
    print(f"    cancelled           {cancelled:>8}")
    print(
        f"    sold out at         {f'{sold_out:.2f}s after 开抢' if sold_out is not None else 'not sold out':>8}"
    )
    print(
        f"    decision latency    p50 {result.latency(0.5) * 1000:.0f} ms   p99 {result.latency(0.99) * 1000:.0f} ms"
    )
    print()
    print("  Invariants")
    ok = True

    def check(label: str, passed: bool) -> None:
        nonlocal ok
        ok = ok and passed
        print(f"    [{'ok' if passed else 'FAIL'}] {label}")

    check(
        f"available {stock['available']} + reserved {stock['reserved']} + sold {stock['sold']}"
        f" == received {stock['received']}",
        conserved,
    )
    check(f"no buyer holds more than {limit} units (max seen: {worst})", worst <= limit)
    check("every request answered without a 5xx", not any(s >= 500 for s in statuses))
    check(
        f"units reserved or sold ({stock['reserved'] + stock['sold']}) never exceed stock",
        stock["reserved"] + stock["sold"] <= stock["received"],
    )
    check(
        "host dashboard agrees with inventory (available, held, sold)", view_agrees(snapshot, stock)
    )
    return ok


async def demo(args: argparse.Namespace) -> int:
    env = read_env_file(args.env_file)
    if "LC_JWT_SECRET" not in env:
        print(f"{args.env_file} has no LC_JWT_SECRET: run `make up` first", file=sys.stderr)
        return 2
    endpoints = Endpoints.from_env(env)
    run = uuid.uuid4().hex[:6]
    sku = f"crab-yangcheng-{run}"
    host_id = "host-xiaoyu"
    limit = 2
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        client = SaleClient(http, endpoints)
        today = date.today()
        await client.put_lot(
            sku,
            f"LOT-{run}-A",
            warehouse_id=WAREHOUSES[0],
            quantity=120,
            expires_on=(today + timedelta(days=3)).isoformat(),
            origin="阳澄湖 Yangcheng Lake",
            producer="阳澄湖蟹业合作社 Yangcheng Crab Cooperative",
            harvested_on=(today - timedelta(days=2)).isoformat(),
            inspection="CIQ 检验合格 passed",
        )
        await client.put_lot(
            sku,
            f"LOT-{run}-B",
            warehouse_id=WAREHOUSES[1],
            quantity=180,
            expires_on=(today + timedelta(days=5)).isoformat(),
            origin="阳澄湖 Yangcheng Lake",
            producer="莲花岛蟹场 Lotus Island Crab Farm",
            harvested_on=(today - timedelta(days=1)).isoformat(),
            inspection="CIQ 检验合格 passed",
        )
        session = await client.create_live_session(
            host_id=host_id,
            title="阳澄湖大闸蟹 · Hairy crab night",
            pavilion="特产馆",
            listings=[
                {
                    "sku": sku,
                    "title": "Yangcheng Lake hairy crabs, 8 x 4 liang",
                    "price_cents": 8800,
                    "per_user_limit": limit,
                }
            ],
        )
        session_id = session["session_id"]
        notifier = endpoints.notifier
        print()
        print("  Watch it live (open these now):")
        print(
            f"    host dashboard     {notifier}/host/{session_id}#token={client.token('host', host_id)}"
        )
        for wh in WAREHOUSES:
            token = client.token("warehouse", f"staff-{wh}", wh)
            print(f"    pick console {wh:<11} {notifier}/warehouse/{wh}#token={token}")
        print(
            f"    contest leaderboard {notifier}/leaderboard#token={client.token('host', host_id)}"
        )
        print()
        for remaining in range(args.countdown, 0, -1):
            print(f"\r  开抢 in {remaining}s ...", end="", flush=True)
            await asyncio.sleep(1)
        print("\r  开抢! 300 boxes, limit 2 per viewer" + " " * 10)
        result = await run_burst(
            client,
            session_id=session_id,
            sku=sku,
            buyers=args.buyers,
            attempts=args.attempts,
            max_quantity=limit,
            concurrency=args.concurrency,
            progress=text_progress("  buyers pressing buy"),
        )
        winners = [a.answer.body for a in result.reserved()]
        rng = random.Random(11)
        rng.shuffle(winners)
        cancel_count = max(1, len(winners) // 20)
        to_cancel, to_pay = winners[:cancel_count], winners[cancel_count:]
        to_pay = to_pay[: int(len(to_pay) * 0.85)]
        buyers_of = {a.answer.body["order_id"]: a.buyer for a in result.reserved()}
        payments = await pay_orders(client, to_pay)
        paid = sum(1 for p in payments if p.status == 200)
        cancels = await asyncio.gather(
            *(
                client.cancel(buyer=buyers_of[o["order_id"]], order_id=o["order_id"])
                for o in to_cancel
            )
        )
        cancelled = sum(1 for c in cancels if c.status == 200)
        for order, answer in [
            *zip(to_pay, payments, strict=True),
            *zip(to_cancel, cancels, strict=True),
        ]:
            if isinstance(answer.body, dict) and "status" in answer.body:
                result.final[order["order_id"]]["status"] = answer.body["status"]
        # Payments answer once inventory committed them, so the stock is final now; the
        # host's view follows within a push interval: read it until it agrees (or 3 s).
        stock = await client.sku(sku)
        deadline = time.monotonic() + 3
        snapshot = await host_snapshot(client, session_id, host_id)
        while time.monotonic() < deadline and not view_agrees(snapshot, stock):
            await asyncio.sleep(0.25)
            snapshot = await host_snapshot(client, session_id, host_id)
        ok = print_outcome(
            result, paid=paid, cancelled=cancelled, stock=stock, limit=limit, snapshot=snapshot
        )
        print()
        print("  Where to look next")
        print(
            f"    host dashboard     {notifier}/host/{session_id}#token={client.token('host', host_id)}"
        )
        print(
            f"    metrics            {endpoints.live_orders}/metrics  {endpoints.inventory}/metrics  {notifier}/metrics"
        )
        box = await first_box(client, WAREHOUSES[0])
        if box is not None:
            print(f"    a box's trace      {notifier}/trace/{box['trace_code']}   (no login)")
            print(f"    its lot's journal  make journal-verify SKU={sku} LOT={box['lot_code']}")
        print("    logs               make logs        stop: make down")
        print(f"    mint a token       make token ROLE=host SUB={host_id}")
        print(f"  (finished {datetime.now(UTC):%H:%M:%S} UTC)")
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", type=Path, default=Path(".run/stack.env"))
    parser.add_argument("--buyers", type=int, default=3000)
    parser.add_argument("--attempts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--countdown", type=int, default=5, help="seconds to open the dashboard")
    args = parser.parse_args()
    return asyncio.run(demo(args))


if __name__ == "__main__":
    sys.exit(main())
