"""`make soak`: bounded memory (issue #9.2). 200,000 orders through a running stack, then
Redis memory while the retentions run out.

Against a stack started with short retentions (`make soak` starts its own, see the
Makefile's SOAK_ENV), one run:

  warm-up   a small sale end to end (order, pay, pick), so every Lua script is loaded and
            every per-process structure exists before the baseline is read
  before    Redis `used_memory` and the RSS of every process of the stack
  orders    --orders attempts in all: most by wrk (bench/wrk/orders.lua, paced over
            --window s, --buyers buyers) on a SKU of --units units (the rest sold out,
            reserved holds expire after LC_RESERVATION_TTL_S); then --paid orders placed,
            paid and their picks completed, and --cancelled placed and cancelled, by the
            aiohttp client of bench/flash_sale.py
  peak      the highest `used_memory` (and RSS per process) sampled every second
  after     `used_memory` polled until it is back within 10% of `before`, not counting
            the lot journals (the tamper-evident record, kept on purpose: their size is
            reported apart), or --retention-timeout s passed

Prints a table; appends one JSON line to bench/results/soak.jsonl with the machine facts.
Exit 0 whatever the figures (a benchmark never fails a build on them); 1 when the stack is
not running or a step could not be set up.

    python -m bench.soak --env-file .run/soak/stack.env --run-dir .run/soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.flash_sale import Endpoints, SaleClient
from bench.load_report import append, machine
from bench.procstat import ProcError, rss_kib, stack_pids
from bench.wrk_runner import WrkError, WrkPlan, run_wrk, write_tokens
from services.common.auth import mint_token
from services.common.mint_token import read_env_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "soak.jsonl"
HOST_ID = "soak-host"
WAREHOUSE = "wh-soak"
# Within this much of the baseline counts as "returned" (the criterion).
TOLERANCE = 0.10


class SoakError(RuntimeError):
    """A step could not be set up; the message says why."""


@dataclass
class Memory:
    """What the sampler saw: Redis used_memory and key count, RSS per process (KiB)."""

    used: int = 0
    keys: int = 0
    dataset: int = 0  # used_memory_dataset: used_memory less Redis' own overhead
    clients: int = 0  # buffers of client connections (MEMORY STATS clients.normal)
    connections: int = 0  # connected_clients
    rss_kib: dict[str, int] = field(default_factory=dict)


@dataclass
class Sampler:
    redis: Redis
    pids: dict[str, int]
    peak: Memory = field(default_factory=Memory)
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def read(self) -> Memory:
        info = await self.redis.info("memory")
        stats = await self.redis.memory_stats()
        connections = int((await self.redis.info("clients"))["connected_clients"])
        keys = int(await self.redis.dbsize())
        rss = {name: rss_kib(pid) for name, pid in self.pids.items()}
        return Memory(
            int(info["used_memory"]),
            keys,
            int(info["used_memory_dataset"]),
            int(stats.get("clients.normal", 0)),
            connections,
            rss,
        )

    async def read_at_rest(self) -> Memory:
        """A reading with the services' idle connections closed first. Each connection
        costs Redis about 38 KB (buffers and the client itself), and the services' pools
        keep what a burst opened: without this the "after" reading would count dozens of
        idle connections the "before" one did not have. The services reconnect on their
        next command (their clients retry connection errors); their background loops
        reopen a few within the pause, in both readings alike."""
        await self.redis.client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(3)  # the services' loops (every 1 s) reconnect meanwhile
        return await self.read()

    async def run(self, started: float) -> None:
        while True:
            now = await self.read()
            self.samples.append((time.monotonic() - started, now.used))
            if now.used > self.peak.used:
                self.peak.used, self.peak.keys = now.used, now.keys
            self.peak.dataset = max(self.peak.dataset, now.dataset)
            for name, kib in now.rss_kib.items():
                self.peak.rss_kib[name] = max(self.peak.rss_kib.get(name, 0), kib)
            await asyncio.sleep(1)  # the sampling period


async def journal_bytes(redis: Redis, prefix: str) -> tuple[int, int]:
    """(bytes, entries) of every lot journal (`inv:{sku}:journal:<lot>` lists)."""
    total = entries = 0
    async for key in redis.scan_iter(match=f"{prefix}inv:*}}:journal:*", count=1000):
        total += int(await redis.memory_usage(key) or 0)
        entries += int(await redis.llen(key))
    return total, entries


async def key_families(redis: Redis) -> dict[str, int]:
    """Keys left, by family (the key with its ids cut off), for the report."""
    families: dict[str, int] = {}
    async for raw in redis.scan_iter(count=1000):
        key = raw.decode(errors="replace")
        parts = key.split(":")
        family = ":".join(parts[:4]) if len(parts) > 4 else key
        families[family] = families.get(family, 0) + 1
    return dict(sorted(families.items(), key=lambda item: -item[1])[:25])


async def gather_limited(limit: int, calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await the calls (coroutines not started yet), at most `limit` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def warm_up(client: SaleClient, nonce: str) -> None:
    """One order through every step, so scripts are loaded before the baseline."""
    sku = f"soak-warm-{nonce}"
    session_id = await client.start_sale(
        sku, units=10, host_id=HOST_ID, price_cents=100, per_user_limit=5, warehouse_id=WAREHOUSE
    )
    buyer = f"soak-warm-{nonce}"
    placed = await client.place_order(
        buyer=buyer, session_id=session_id, sku=sku, quantity=1, key=nonce, wait=5
    )
    if placed.status != 201:
        raise SoakError(f"warm-up order: {placed.status} {placed.body}")
    order_id = placed.body["order_id"]
    paid = await client.pay(order_id, 100, f"soak-warm-{nonce}")
    if paid.status != 200:
        raise SoakError(f"warm-up payment: {paid.status} {paid.body}")
    await complete_picks(client, 1)
    cancelled = await client.place_order(
        buyer=buyer, session_id=session_id, sku=sku, quantity=1, key=nonce + "-2", wait=5
    )
    await client.cancel(buyer=buyer, order_id=cancelled.body["order_id"])


async def complete_picks(client: SaleClient, expected: int, deadline_s: float = 300) -> int:
    """Complete open picks of the soak's warehouse until `expected` were completed."""
    staff = {"Authorization": f"Bearer {client.token('warehouse', 'soak-staff', WAREHOUSE)}"}
    base = f"{client.endpoints.notifier}/v1/warehouses/{WAREHOUSE}/picks?status=open&limit=500"
    done = 0
    end = time.monotonic() + deadline_s
    while done < expected:
        if time.monotonic() > end:
            raise SoakError(f"only {done} of {expected} picks completed within {deadline_s:.0f}s")
        answer = await client.call("GET", base, headers=staff)
        picks = answer.body["picks"] if answer.status == 200 else []
        if not picks:
            await asyncio.sleep(0.5)  # the notifier is still consuming pick.requested
            continue
        url = f"{client.endpoints.notifier}/v1/picks/{{}}/complete"
        await gather_limited(
            32,
            [client.call("POST", url.format(p["pick_id"]), headers=staff) for p in picks],
        )
        done += len(picks)
    return done


async def paid_and_cancelled(
    client: SaleClient, args: argparse.Namespace, nonce: str
) -> dict[str, int]:
    """--paid orders placed, paid and picked; --cancelled placed and cancelled."""
    sku = f"soak-paid-{nonce}"
    count = args.paid + args.cancelled
    session_id = await client.start_sale(
        sku,
        units=count,
        host_id=HOST_ID,
        price_cents=100,
        per_user_limit=1,
        warehouse_id=WAREHOUSE,
        title="soak: paid and cancelled",
    )
    buyers = [f"soak-{nonce}-p{i}" for i in range(count)]
    placed = await gather_limited(
        args.client_concurrency,
        [
            client.place_order(buyer=b, session_id=session_id, sku=sku, quantity=1, key=b, wait=5)
            for b in buyers
        ],
    )
    orders = [
        (b, a.body["order_id"])
        for b, a in zip(buyers, placed, strict=True)
        if a.status in (201, 202)
    ]
    to_pay, to_cancel = orders[: args.paid], orders[args.paid :]
    paid = await gather_limited(
        args.client_concurrency,
        [client.pay(o, 100, f"soak-{uuid.uuid4().hex}") for _, o in to_pay],
    )
    cancelled = await gather_limited(
        args.client_concurrency,
        [client.cancel(buyer=b, order_id=o) for b, o in to_cancel],
    )
    paid_ok = sum(1 for a in paid if a.status == 200)
    picked = await complete_picks(client, paid_ok)
    return {
        "placed": len(orders),
        "paid": paid_ok,
        "cancelled": sum(1 for a in cancelled if a.status == 200),
        "picks_completed": picked,
    }


async def wrk_orders(
    client: SaleClient, args: argparse.Namespace, nonce: str, workdir: Path, attempts: int
) -> dict[str, Any]:
    sku = f"soak-wrk-{nonce}"
    session_id = await client.start_sale(
        sku,
        units=args.units,
        host_id=HOST_ID,
        price_cents=100,
        per_user_limit=1_000_000,
        warehouse_id=WAREHOUSE,
        title="soak: wrk",
    )
    tokens = workdir / "soak-buyers.txt"
    secret = client.endpoints.jwt_secret
    write_tokens(
        tokens,
        (
            mint_token(secret, sub=f"soak-{nonce}-w{i}", role="buyer", ttl_s=6 * 3600)
            for i in range(args.buyers)
        ),
    )
    plan = WrkPlan(
        base_url=client.endpoints.live_orders,
        path=f"/v1/sessions/{session_id}/orders?wait=5",
        sku=sku,
        tokens_file=tokens,
        nonce=f"soak-{nonce}",
        connections=args.connections,
        threads=2,
        duration_s=int(args.window * 10) + 120,
        timeout_s=10,
        quota=attempts,
        window_s=args.window,
    )
    result = await asyncio.to_thread(run_wrk, plan, workdir, "soak")
    return {
        "attempts": attempts,
        "answered": result.answered,
        "seconds": round(result.seconds, 1),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "reasons": dict(result.reasons),
        "socket_errors": result.socket_errors,
    }


def mib(value: int) -> str:
    return f"{value / 2**20:.2f} MiB"


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    env = read_env_file(args.env_file)
    if "LC_JWT_SECRET" not in env:
        raise SoakError(f"{args.env_file} has no LC_JWT_SECRET: start the stack first")
    endpoints = Endpoints.from_env(env)
    pids = stack_pids(args.run_dir)
    prefix = env.get("LC_REDIS_PREFIX", "lc:")
    workdir = args.run_dir / "soak"
    workdir.mkdir(parents=True, exist_ok=True)
    nonce = uuid.uuid4().hex[:8]
    redis = Redis.from_url(env["LC_REDIS_URL"])
    settings = {k: v for k, v in sorted(env.items()) if "RETENTION" in k or k in RETENTION_VARS}
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            client = SaleClient(http, endpoints)
            await warm_up(client, nonce)
            await asyncio.sleep(2)  # let the warm-up's events settle before the baseline
            sampler = Sampler(redis, pids)
            before = await sampler.read_at_rest()
            journals_before, _ = await journal_bytes(redis, prefix)
            # What retention must bring back: used_memory at rest, less the lot journals
            # (kept on purpose: the lots' tamper-evident record).
            base = before.used - journals_before
            print(f"before: used_memory {mib(before.used)}, {before.keys} keys", flush=True)
            started = time.monotonic()
            sampling = asyncio.create_task(sampler.run(started))
            try:
                by_client = args.paid + args.cancelled
                print(
                    f"orders: {args.orders - by_client} by wrk over {args.window:g}s ...",
                    flush=True,
                )
                wrk = await wrk_orders(client, args, nonce, workdir, args.orders - by_client)
                print(f"  {wrk['statuses']} in {wrk['seconds']}s", flush=True)
                print(
                    f"orders: {args.paid} paid + picked, {args.cancelled} cancelled ...", flush=True
                )
                lifecycle = await paid_and_cancelled(client, args, nonce)
                print(f"  {lifecycle}", flush=True)
                load_s = time.monotonic() - started
                print("waiting for the retentions to run out ...", flush=True)
                deadline = time.monotonic() + args.retention_timeout
                while True:
                    after = await sampler.read_at_rest()
                    journals, entries = await journal_bytes(redis, prefix)
                    net = after.used - journals
                    returned = net <= base * (1 + TOLERANCE)
                    if returned or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(15)  # polling interval
                waited_s = time.monotonic() - started - load_s
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            families = await key_families(redis)
    finally:
        await redis.aclose()
    return {
        "kind": "soak",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "stack_settings": settings,
        "wrk": wrk,
        "lifecycle": lifecycle,
        "load_s": round(load_s, 1),
        "retention_wait_s": round(waited_s, 1),
        "redis": {
            "before": before.used,
            "peak": sampler.peak.used,
            "after": after.used,
            "journals": journals,
            "journal_entries": entries,
            "after_less_journals": after.used - journals,
            "dataset_before": before.dataset,
            "dataset_peak": sampler.peak.dataset,
            "dataset_after": after.dataset,
            "clients_before": before.clients,
            "clients_after": after.clients,
            "connections_before": before.connections,
            "connections_after": after.connections,
            "net_before": base,
            "net_after": net,
            "keys_before": before.keys,
            "keys_peak": sampler.peak.keys,
            "keys_after": after.keys,
            "returned_within_10pct": returned,
        },
        "rss_kib": {"before": before.rss_kib, "peak": sampler.peak.rss_kib, "after": after.rss_kib},
        "keys_left": families,
    }


RETENTION_VARS = {"LC_TOPIC_SEGMENT_MS", "LC_REPLAY_SLACK_MS", "LC_RESERVATION_TTL_S"}


def render(entry: dict[str, Any]) -> str:
    r = entry["redis"]
    lines = [
        f"machine: {entry['machine'].get('nproc')} cores, {entry['machine'].get('cpu')}",
        f"stack settings: {entry['stack_settings']}",
        f"wrk: {entry['wrk']['attempts']} attempts, {entry['wrk']['statuses']} in {entry['wrk']['seconds']}s",
        f"client: {entry['lifecycle']}",
        f"load took {entry['load_s']}s; retentions ran out {entry['retention_wait_s']}s later",
        "",
        "redis                before       peak         after",
        f"used_memory          {mib(r['before']):<12} {mib(r['peak']):<12} {mib(r['after']):<12}",
        f"used_memory_dataset  {mib(r['dataset_before']):<12} {mib(r['dataset_peak']):<12} "
        f"{mib(r['dataset_after']):<12}",
        f"client buffers       {mib(r['clients_before']):<12} {'':<12} {mib(r['clients_after']):<12}",
        f"keys                 {r['keys_before']:<12} {r['keys_peak']:<12} {r['keys_after']:<12}",
        f"connections          {r['connections_before']:<12} {'':<12} {r['connections_after']:<12}",
        f"lot journals kept: {r['journal_entries']} entries, {mib(r['journals'])}",
        f"used_memory at rest less journals: {mib(r['net_before'])} before, "
        f"{mib(r['net_after'])} after: "
        f"{'back within 10%' if r['returned_within_10pct'] else 'NOT back within 10%'}",
        "",
        "RSS (MiB)      before   peak     after",
    ]
    rss = entry["rss_kib"]
    for name in rss["before"]:
        lines.append(
            f"{name:<14} {rss['before'][name] / 1024:<8.0f} {rss['peak'].get(name, 0) / 1024:<8.0f} "
            f"{rss['after'].get(name, 0) / 1024:<8.0f}"
        )
    lines += ["", "keys left by family:"] + [
        f"  {n:>7}  {k}" for k, n in entry["keys_left"].items()
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", type=Path, default=ROOT / ".run" / "soak" / "stack.env")
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run" / "soak")
    parser.add_argument("--orders", type=int, default=200_000, help="order attempts in all")
    parser.add_argument("--paid", type=int, default=10_000, help="of them paid and picked")
    parser.add_argument("--cancelled", type=int, default=2_000, help="of them cancelled")
    parser.add_argument("--units", type=int, default=150_000, help="stock of the wrk SKU")
    parser.add_argument("--buyers", type=int, default=50_000, help="wrk's buyer tokens")
    parser.add_argument("--window", type=float, default=120, help="s wrk offers its share in")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--client-concurrency", type=int, default=64)
    parser.add_argument("--retention-timeout", type=float, default=900)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        entry = asyncio.run(soak(args))
    except (SoakError, ProcError, WrkError, FileNotFoundError, aiohttp.ClientError) as exc:
        print(f"soak: {exc}")
        return 1
    print()
    print(render(entry))
    append(RESULTS, entry)
    print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
