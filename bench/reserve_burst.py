"""Reservation burst benchmark against a running stack (`make bench`).

Runs several 开抢 bursts on fresh SKUs and reports, per burst and as medians across
bursts: attempts per second, decision latency p50/p99 for attempts decided by inventory
(stock still there), and for attempts refused by live_orders' sold-out fast path (after the
sell-out). The two latencies are measured in the same bursts, so their ratio is meaningful
on a noisy shared machine where absolute times are not.

    python -m bench.reserve_burst --env-file .run/stack.env [--runs 5 --attempts 4000]

Prints figures; never passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from pathlib import Path

import aiohttp

from bench.flash_sale import Endpoints, SaleClient, run_burst
from deploy.local.stack import read_env_file


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one_burst(client: SaleClient, args: argparse.Namespace) -> dict[str, float]:
    sku = f"bench-{uuid.uuid4().hex[:8]}"
    session_id = await client.start_sale(
        sku, units=args.stock, host_id="host-bench", price_cents=100, per_user_limit=2
    )
    result = await run_burst(
        client,
        session_id=session_id,
        sku=sku,
        buyers=args.buyers,
        attempts=args.attempts,
        max_quantity=2,
        concurrency=args.concurrency,
        seed=uuid.uuid4().int % 1000,
    )
    sold_out_at = result.sold_out_after()
    decided = [
        a.answer.seconds
        for a in result.attempts
        if a.answer.status == 201
        or (a.answer.status == 409 and a.answer.body.get("reason") == "limit_exceeded")
    ]
    # Attempts sent after the sell-out was known: the fast path answers them.
    fast = [
        a.answer.seconds
        for a in result.attempts
        if a.answer.status == 409
        and a.answer.body.get("reason") == "sold_out"
        and sold_out_at is not None
        and a.started - result.started > sold_out_at + 0.25
    ]
    wall = result.finished - result.started
    return {
        "attempts_per_s": len(result.attempts) / wall,
        "decided_p50_ms": percentile(decided, 0.5) * 1000,
        "decided_p99_ms": percentile(decided, 0.99) * 1000,
        "fast_path_p50_ms": percentile(fast, 0.5) * 1000,
        "fast_path_p99_ms": percentile(fast, 0.99) * 1000,
        "sold_out_after_s": sold_out_at if sold_out_at is not None else float("nan"),
        "errors_5xx": float(sum(1 for a in result.attempts if a.answer.status >= 500)),
    }


async def main_async(args: argparse.Namespace) -> int:
    env = read_env_file(args.env_file)
    endpoints = Endpoints.from_env(env)
    rows = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as http:
        client = SaleClient(http, endpoints)
        for run in range(args.runs):
            row = await one_burst(client, args)
            rows.append(row)
            print(
                f"run {run + 1}: {row['attempts_per_s']:.0f} attempts/s, decided p50 "
                f"{row['decided_p50_ms']:.1f} ms p99 {row['decided_p99_ms']:.1f} ms, fast path "
                f"p50 {row['fast_path_p50_ms']:.1f} ms p99 {row['fast_path_p99_ms']:.1f} ms, "
                f"sold out after {row['sold_out_after_s']:.2f} s, 5xx {row['errors_5xx']:.0f}",
                flush=True,
            )
    print()
    print(
        f"machine: {os.cpu_count()} cores; {args.runs} bursts of {args.attempts} attempts, "
        f"{args.buyers} buyers, {args.stock} units, concurrency {args.concurrency}"
    )
    print("| figure | median over bursts |")
    print("|---|---|")
    for key in rows[0]:
        print(f"| {key} | {statistics.median(r[key] for r in rows):.2f} |")
    ratio = statistics.median(r["decided_p50_ms"] / r["fast_path_p50_ms"] for r in rows)
    print(f"| decided p50 / fast-path p50 (same burst) | {ratio:.1f}x |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", type=Path, default=Path(".run/stack.env"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--attempts", type=int, default=4000)
    parser.add_argument("--buyers", type=int, default=2000)
    parser.add_argument("--stock", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=200)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
