"""How much does deciding a consumed batch in ONE Lua call buy? (`make bench`)

Decides the same number of orders with `StockStore.reserve_batch` in batches of 1, 10, 100
and 500 orders per call, against the running stack's Redis (under a throw-away key prefix
that is deleted afterwards). Rounds interleave the batch sizes so machine noise hits all of
them alike; the figures are medians over rounds and ratios to batch size 1 from the same
rounds.

    python -m bench.reserve_batch_sizes --env-file .run/stack.env [--orders 5000 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from deploy.local.stack import read_env_file
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.inventory.domain import LotInput, PlacedOrder
from services.inventory.stock_store import StockStore

SIZES = (1, 10, 100, 500)


async def decide(store: StockStore, sku: str, orders: int, size: int) -> float:
    await store.upsert_lot(sku, LotInput("L1", "wh", orders * 2, expires_on=None, origin=None))
    batch = [
        PlacedOrder(
            offset=i,
            order_id=f"{sku}-{i}",
            buyer_id=f"b{i}",
            quantity=1,
            per_user_limit=2,
            session_id="s",
            total_cents=100,
        )
        for i in range(orders)
    ]
    started = time.perf_counter()
    for start in range(0, orders, size):
        await store.reserve_batch(sku, batch[start : start + size], topic="bench", partition=0)
    return orders / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> int:
    env = read_env_file(args.env_file)
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    settings = Settings.from_env("inventory", {**env, "LC_REDIS_PREFIX": prefix})
    redis = create_redis(settings.redis_url)
    store = StockStore(redis, settings)
    rates: dict[int, list[float]] = {size: [] for size in SIZES}
    try:
        for round_ in range(args.rounds):
            for size in SIZES:
                rate = await decide(store, f"sku-{round_}-{size}", args.orders, size)
                rates[size].append(rate)
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"batch {s}: {rates[s][-1]:.0f}/s" for s in SIZES),
                flush=True,
            )
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await redis.delete(*keys[start : start + 500])
        await redis.aclose()
    print()
    print(
        f"machine: {os.cpu_count()} cores; {args.orders} orders per size per round, "
        f"{args.rounds} rounds, one SKU per run"
    )
    print(
        "| orders per Lua call | decisions/s (median) | vs 1 per call (median of same-round ratios) |"
    )
    print("|---|---|---|")
    for size in SIZES:
        ratio = statistics.median(r / b for r, b in zip(rates[size], rates[1], strict=True))
        print(f"| {size} | {statistics.median(rates[size]):.0f} | {ratio:.1f}x |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", type=Path, default=Path(".run/stack.env"))
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
