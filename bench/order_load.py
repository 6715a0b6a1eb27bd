"""What the wrk scenarios of `make bench` (bench/http_load.py) and `make bench-scale`
(bench/scale_out.py) share: the sales they run against, the measuring of one scenario,
and the options that mean the same in both.

  decided    a SKU with ample stock and a per-user limit far above what a buyer sends;
             a warm-up order must answer 201 (decided by inventory over Kafka) first
  sold_out   a SKU of one unit, sold by one order; then probed until an attempt answers
             409 sold_out *and* live_orders' fast-path counter moved, so what wrk meets
             is the fast path, not inventory deciding each attempt

CPU per answer: every process's utime+stime from /proc before the load and after the
work it queued was done, idle subtracted (bench/procstat.py `cpu_during`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.flash_sale import Answer, Endpoints, SaleClient
from bench.procstat import CpuUse, cpu_during
from bench.wrk_runner import WrkPlan, WrkResult, write_tokens
from deploy.local.stack import run_dir
from services.common.auth import mint_token

HOST_ID = "host-bench"
FAST_PATH_METRIC = "lc_live_orders_fast_path_rejections_total"

T = TypeVar("T")


class BenchError(RuntimeError):
    """A scenario could not be set up; the message says why."""


@dataclass
class ScenarioResult:
    """One scenario of one run."""

    name: str  # l0, decided_64, decided_8, sold_out_64, burst; decided_2p, ... (scale_out)
    connections: int
    wrk: WrkResult
    cpu_s: dict[str, float]  # process -> CPU seconds used during the scenario, idle removed
    cpu_raw_s: dict[str, float]  # the same with the idle share left in
    window_s: float  # from the reading before the load to the one after it settled
    settled: bool
    settle_s: float  # how long the after-reading waited for the CPU to fall back to idle
    profiled: str | None = None  # the profile written during this scenario
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        name: str,
        connections: int,
        wrk: WrkResult,
        cpu: CpuUse,
        *,
        profiled: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ScenarioResult:
        return cls(
            name=name,
            connections=connections,
            wrk=wrk,
            cpu_s=cpu.net_s,
            cpu_raw_s=cpu.raw_s,
            window_s=cpu.window_s,
            settled=cpu.settled,
            settle_s=cpu.settle_s,
            profiled=profiled,
            extra=dict(extra or {}),
        )

    def with_idle(self, idle: Mapping[str, float]) -> ScenarioResult:
        """The same, with `idle` (process -> cores) subtracted from the raw CPU instead."""
        net = {
            n: max(0.0, used - idle.get(n, 0.0) * self.window_s)
            for n, used in self.cpu_raw_s.items()
        }
        return dataclasses.replace(self, cpu_s=net)

    def cpu_us_per_answer(self) -> dict[str, float]:
        answered = max(self.wrk.answered, 1)
        return {name: s * 1e6 / answered for name, s in self.cpu_s.items()}

    def wrk_us_per_answer(self) -> float:
        return self.wrk.wrk_cpu_s * 1e6 / max(self.wrk.answered, 1)


@dataclass(kw_only=True)
class OrderLoad:
    """What every scenario needs: the stack, the options, the load generator's inputs."""

    args: argparse.Namespace
    client: SaleClient
    http: aiohttp.ClientSession
    endpoints: Endpoints
    run_dir: Path
    workdir: Path
    nonce: str
    idle: dict[str, float] = field(default_factory=dict)
    buyer_tokens: Path = Path()

    def timeout_s(self) -> int:
        return int(self.args.wait) + 5

    def orders_path(self, session_id: str) -> str:
        return f"/v1/sessions/{session_id}/orders?wait={self.args.wait:g}"

    def client_at(self, live_orders_url: str | None) -> SaleClient:
        """The client whose orders go to that live_orders process (None: the stack's)."""
        if live_orders_url is None:
            return self.client
        return SaleClient(self.http, self.endpoints, [live_orders_url])

    async def measure(
        self,
        pids: Mapping[str, int],
        load: Callable[[], Awaitable[T]],
        idle: Mapping[str, float] | None = None,
    ) -> tuple[T, CpuUse]:
        """`load`'s outcome and what `pids` spent on it (procstat.cpu_during, with the
        settle options); `idle` defaults to the rates measured before any load."""
        return await cpu_during(
            pids,
            self.idle if idle is None else idle,
            load,
            margin_cores=self.args.settle_margin,
            deadline_s=self.args.settle_timeout,
        )


# ---------------------------------------------------------------------------- set-up helpers


def new_sku() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def mint_buyers(load: OrderLoad, path: Path, prefix: str, count: int) -> Path:
    """`count` buyer tokens (sub `<prefix>-<i>`), one per line, for orders.lua."""
    secret = load.endpoints.jwt_secret
    ttl = 12 * 3600
    write_tokens(
        path,
        (mint_token(secret, sub=f"{prefix}-{i}", role="buyer", ttl_s=ttl) for i in range(count)),
    )
    return path


async def place(
    load: OrderLoad,
    session_id: str,
    sku: str,
    buyer: str,
    *,
    wait: float = 5,
    live_orders_url: str | None = None,
) -> Answer:
    return await load.client_at(live_orders_url).place_order(
        buyer=buyer, session_id=session_id, sku=sku, quantity=1, key=uuid.uuid4().hex, wait=wait
    )


async def fast_path_count(load: OrderLoad, live_orders_url: str | None = None) -> float | None:
    """A live_orders process's count of attempts refused as sold out without asking
    inventory, from its /metrics (None if that metric is not exported)."""
    url = live_orders_url or load.endpoints.live_orders
    async with load.http.get(f"{url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(FAST_PATH_METRIC + " "):
            return float(line.split()[1])
    return None


async def poll(
    what: str, deadline_s: float, probe: Callable[[], Awaitable[T]], interval_s: float = 0.2
) -> T:
    """Call `probe` until it returns something true; that value."""
    end = time.monotonic() + deadline_s
    last: T | None = None
    while time.monotonic() < end:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)  # polling interval
    raise BenchError(f"{what}: not within {deadline_s:.0f}s (last: {last!r})")


def timed_plan(
    load: OrderLoad,
    base_url: str,
    path: str,
    sku: str,
    connections: int,
    *,
    tokens: Path | None = None,
    histogram: bool = False,
) -> WrkPlan:
    return WrkPlan(
        base_url=base_url,
        path=path,
        sku=sku,
        tokens_file=tokens or load.buyer_tokens,
        nonce=f"{load.nonce}-{uuid.uuid4().hex[:8]}",
        connections=connections,
        threads=load.args.threads,
        duration_s=load.args.duration,
        timeout_s=load.timeout_s(),
        histogram=histogram,
    )


# ---------------------------------------------------------------------------- the sales


async def open_decided_sale(
    load: OrderLoad, sku: str, *, live_orders_url: str | None = None
) -> str:
    """A live session selling `sku` with ample stock (--stock units, --per-user-limit);
    returns its id once a warm-up order (through `live_orders_url`) answered 201."""
    session_id = await load.client.start_sale(
        sku,
        units=load.args.stock,
        host_id=HOST_ID,
        price_cents=100,
        per_user_limit=load.args.per_user_limit,
    )
    warmup = f"bench-{load.nonce}-warmup"

    async def reserved() -> bool:
        answer = await place(load, session_id, sku, warmup, live_orders_url=live_orders_url)
        return answer.status == 201

    await poll("a 201 from the decided path", 30, reserved)
    return session_id


async def open_sold_out_sale(
    load: OrderLoad, sku: str, *, live_orders_url: str | None = None
) -> str:
    """A live session whose one unit of `sku` is sold; returns its id once the live_orders
    process at `live_orders_url` refuses attempts on its fast path."""
    session_id = await load.client.start_sale(
        sku, units=1, host_id=HOST_ID, price_cents=100, per_user_limit=1
    )
    sold = await place(
        load, session_id, sku, f"bench-{load.nonce}-seller", live_orders_url=live_orders_url
    )
    if sold.status != 201:
        raise BenchError(f"selling the one unit of {sku} answered {sold.status}: {sold.body}")
    probes = iter(range(1_000_000))
    counted = await fast_path_count(load, live_orders_url)

    async def refused_by_fast_path() -> bool:
        # A fresh buyer per probe: probes spend rate-limit tokens too.
        answer = await place(
            load,
            session_id,
            sku,
            f"bench-{load.nonce}-probe-{next(probes)}",
            live_orders_url=live_orders_url,
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status != 409 or body.get("reason") != "sold_out":
            return False
        # The first sold_out answers may still be inventory's decision; wait until
        # live_orders itself knows (its fast-path counter moves), when the metric exists.
        nonlocal counted
        now = await fast_path_count(load, live_orders_url)
        moved = counted is None or now is None or now > counted
        counted = now
        return moved

    await poll("a 409 sold_out from the fast path", 30, refused_by_fast_path)
    return session_id


# ---------------------------------------------------------------------------- options


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    default_run_dir = run_dir()
    parser.add_argument("--env-file", type=Path, default=default_run_dir / "stack.env")
    parser.add_argument(
        "--run-dir", type=Path, default=default_run_dir, help="where `make up` keeps pids/"
    )


def add_order_arguments(parser: argparse.ArgumentParser, *, buyers_help: str) -> None:
    parser.add_argument("--wait", type=float, default=5, help="?wait= of every order POST")
    parser.add_argument("--buyers", type=int, default=10_000, help=buyers_help)
    parser.add_argument("--stock", type=int, default=10_000_000, help="units (decided)")
    parser.add_argument("--per-user-limit", type=int, default=1_000_000, help="(decided)")


def add_cpu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idle-seconds", type=float, default=5, help="idle CPU: the quietest second of this many"
    )
    parser.add_argument(
        "--settle-margin",
        type=float,
        default=0.1,
        help="cores above idle that still count as caught up",
    )
    parser.add_argument("--settle-timeout", type=float, default=120)
