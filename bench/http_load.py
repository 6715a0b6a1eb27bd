"""`make bench`: the order path at the machine's speed (issue #7), measured with wrk.

One run measures, against the running stack (`make up`):

  l0          an empty aiohttp JSON POST handler (bench/empty_handler.py, its own process):
              the baseline every ratio is taken against
  decided     POST /v1/sessions/{sid}/orders?wait=5 on a SKU with ample stock, every answer
              a 201 decided by inventory over Kafka; at --connections and --low-connections
  sold_out    the same on a sold-out SKU: 409 sold_out from live_orders' fast path
  burst       the launch: --burst-attempts attempts by --burst-buyers buyers offered within
              --burst-window s on a fresh SKU of --burst-units units, then an oversell check
              through the inventory API

Before anything is measured, --warmup-seconds of untimed load (half decided, half sold
out): the broker is a JVM whose JIT compiler (C2) spends seconds of CPU during its first
minute of load after `make up`, which is not what an order costs a running broker.

and for each scenario: req/s, p50/p99 (wrk's histogram), answers by status, socket errors,
the CPU time every process of the stack spent per answered request (/proc, after the
consumers caught up, idle CPU subtracted) and wrk's own; RSS of each process before and
after the load. `--runs N` repeats the whole set N times, interleaved, and reports medians
and per-run ratios to L0. A table goes to stdout, a JSON line to bench/results/history.jsonl.

    python -m bench.http_load --env-file .run/stack.env [--duration 10 --runs 3]
    python -m bench.http_load --duration 3 --burst-attempts 20000 --burst-buyers 5000
    python -m bench.http_load --profile live_orders          # py-spy flame graph
    python -m bench.http_load --profile redis                # perf, with its forked children
    python -m bench.http_load --scenarios sold_out --profile live_orders \
        --profile-scenario sold_out_64 --profile-pin              # ... of on-CPU time

Prints figures; never fails on a timing. Exit status 1: the stack is not running, wrk is
missing, or a scenario could not be set up; 3: the launch burst broke an invariant (a 5xx,
more units held or sold than stocked, more 201s than units, stock not conserved).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.empty_handler import default_loop
from bench.flash_sale import ApiError, Endpoints, SaleClient
from bench.load_report import append, progress_line, record, render
from bench.order_load import (
    HOST_ID,
    BenchError,
    OrderLoad,
    ScenarioResult,
    add_cpu_arguments,
    add_order_arguments,
    add_stack_arguments,
    fast_path_count,
    mint_buyers,
    new_sku,
    open_decided_sale,
    open_sold_out_sale,
    timed_plan,
)
from bench.procstat import (
    ProcError,
    alone_on_a_core,
    idle_rates,
    rss_kib,
    segments_sent,
    socket_counters,
    stack_pids,
)
from bench.wrk_runner import WrkError, WrkPlan, WrkResult, run_wrk
from deploy.local.stack import (
    ROOT,
    SERVICES,
    StackError,
    free_port,
    http_ok,
    read_env_file,
    wait_until,
)

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("l0", "decided", "sold_out", "burst")
# Python processes py-spy samples, and redis-server, which perf samples with the children
# it forks (AOF rewrites: they were a fifth to a half of its CPU, bench/RESULTS.md).
PROFILEABLE = (*SERVICES, "empty_handler", "redis")

# Checks of the launch burst that are correctness, not speed: a failure fails `make bench`.
# (all_attempts_sent/answered are reported only: socket errors are the machine's doing.)
INVARIANTS = frozenset(
    {"no_5xx", "reserved_plus_sold_within_units", "stock_conserved", "created_within_units"}
)

# ScenarioResult lives in order_load; the tests import it from here.
__all__ = ["Bench", "ScenarioResult", "main"]


@dataclass(kw_only=True)
class Bench(OrderLoad):
    """OrderLoad, plus the empty handler L0 measures and py-spy's state."""

    handler_url: str
    handler_pid: int
    profiled: bool = False  # py-spy runs once per invocation
    # The ports whose requests are counted per process (the broker's, Redis').
    counted_ports: dict[str, int] = field(default_factory=dict)

    def stack(self) -> dict[str, int]:
        # Read again for every scenario: the services may have been restarted since.
        return stack_pids(self.run_dir)


# ---------------------------------------------------------------------------- measuring


async def measure(
    bench: Bench, name: str, pids: Mapping[str, int], plan: WrkPlan, **extra: Any
) -> ScenarioResult:
    """Run `plan` and attribute the CPU time of `pids` (before -> after the load and the
    asynchronous work it queued) to its answers."""

    async def load() -> tuple[WrkResult, str | None, int | None]:
        target = profile_target(bench, name)
        pinning: contextlib.AbstractContextManager[int | None] = contextlib.nullcontext()
        if target is not None and bench.args.profile_pin:
            others = [pid for pid in (*bench.stack().values(), bench.handler_pid) if pid != target]
            pinning = alone_on_a_core(target, others)
        with pinning as core:
            profiler = start_profiler(bench, name, plan, target)
            try:
                result = await asyncio.to_thread(run_wrk, plan, bench.workdir, name)
            finally:
                profiled = finish_profiler(profiler)
        return result, profiled, core

    sockets = socket_counters()
    (result, profiled, core), cpu = await bench.measure(pids, load)
    after = socket_counters() if sockets is not None else None
    if sockets is not None and after is not None and bench.counted_ports:
        services = {name: pid for name, pid in pids.items() if name in SERVICES}
        extra["segments_sent"] = segments_sent(sockets, after, services, bench.counted_ports)
    if core is not None:
        extra["pinned"] = f"{bench.args.profile} alone on core {core}, the rest on the others"
    scenario = ScenarioResult.of(
        name, plan.connections, result, cpu, profiled=profiled, extra=extra
    )
    print(progress_line(scenario), flush=True)
    return scenario


@dataclass
class Profiler:
    proc: subprocess.Popen[bytes]
    output: Path
    # perf's samples, made into `output` (a text report) once it has stopped.
    perf_data: Path | None = None


def profile_target(bench: Bench, scenario: str) -> int | None:
    """The pid py-spy samples during `scenario`, if it is the one to profile (once)."""
    args = bench.args
    if args.profile is None or scenario != args.profile_scenario or bench.profiled:
        return None
    return bench.handler_pid if args.profile == "empty_handler" else bench.stack()[args.profile]


def start_profiler(bench: Bench, scenario: str, plan: WrkPlan, pid: int | None) -> Profiler | None:
    if pid is None:
        return None
    args = bench.args
    bench.profiled = True
    if args.profile == "redis":
        return start_perf(args, scenario, plan, pid)
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if py_spy is None:
        raise BenchError("py-spy not found: `make install` installs requirements-dev.txt")
    output, duration = profile_output(args, scenario, plan, ".svg")
    log = (bench.workdir / f"py-spy-{scenario}.txt").open("wb")
    with log:
        proc = subprocess.Popen(
            [py_spy, "record", "-o", str(output), "--pid", str(pid), "--duration", str(duration)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Profiler(proc, output)


def profile_output(
    args: argparse.Namespace, scenario: str, plan: WrkPlan, suffix: str
) -> tuple[Path, float]:
    """Where a profile of `scenario` goes (bench/results/<process>-<scenario>-<time><suffix>)
    and for how long it samples."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return (
        RESULTS / f"{args.profile}-{scenario}-{stamp}{suffix}",
        args.profile_duration or plan.duration_s,
    )


def start_perf(args: argparse.Namespace, scenario: str, plan: WrkPlan, pid: int) -> Profiler:
    """`perf record` of `pid` and of what it forks meanwhile, call graphs at 999 Hz."""
    perf = shutil.which("perf")
    if perf is None:
        raise BenchError("perf not found: `make system-deps` installs it (Debian: linux-perf)")
    data, duration = profile_output(args, scenario, plan, ".perf.data")
    proc = subprocess.Popen(
        perf_record_command(perf, pid, data, duration),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Profiler(proc, data.with_suffix("").with_suffix(".txt"), perf_data=data)


def perf_record_command(perf: str, pid: int, data: Path, duration_s: float) -> list[str]:
    # perf follows the threads and children a process makes while it is recorded: a
    # rewrite's forked child is in the samples, under its own pid.
    return [
        perf,
        "record",
        "-F",
        "999",
        "-g",
        "-p",
        str(pid),
        "-o",
        str(data),
        "--",
        "sleep",
        f"{duration_s:g}",
    ]


def perf_report(perf_data: Path, output: Path) -> bool:
    """The recording as text: the share of each process (the server against its forked
    children), then the hottest functions."""
    perf = shutil.which("perf") or "perf"
    parts = []
    for sort in ("pid,comm", "symbol"):
        done = subprocess.run(
            [
                perf,
                "report",
                "-i",
                str(perf_data),
                "--no-children",
                "--sort",
                sort,
                "--stdio",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return False
        parts.append(done.stdout)
    output.write_text("\n".join(parts))
    return True


def finish_profiler(profiler: Profiler | None) -> str | None:
    if profiler is None:
        return None
    if profiler.perf_data is not None:
        profiler.proc.wait()
        if profiler.proc.returncode != 0 or not perf_report(profiler.perf_data, profiler.output):
            print(f"perf exited with {profiler.proc.returncode}: no profile", flush=True)
            return None
        return str(profiler.output.relative_to(ROOT))
    # A timed scenario's py-spy ends with wrk (same duration); the burst's runs until
    # wrk's deadline unless told: Ctrl-C makes py-spy write what it sampled and exit.
    with contextlib.suppress(subprocess.TimeoutExpired):
        profiler.proc.wait(timeout=5)
    if profiler.proc.poll() is None:
        profiler.proc.send_signal(signal.SIGINT)
    try:
        profiler.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        profiler.proc.kill()
        profiler.proc.wait()
    if profiler.proc.returncode != 0 or not profiler.output.exists():
        print(f"py-spy exited with {profiler.proc.returncode}: no flame graph", flush=True)
        return None
    return str(profiler.output.relative_to(ROOT))


# ---------------------------------------------------------------------------- scenarios


async def scenario_l0(bench: Bench) -> list[ScenarioResult]:
    plan = timed_plan(
        bench,
        bench.handler_url,
        "/v1/sessions/l0/orders?wait=5",
        "l0",
        bench.args.connections,
    )
    return [await measure(bench, "l0", {"empty_handler": bench.handler_pid}, plan)]


async def scenario_decided(bench: Bench) -> list[ScenarioResult]:
    sku = new_sku()
    session_id = await open_decided_sale(bench, sku)
    results = []
    # --low-connections 0: the first run only.
    for connections in filter(None, (bench.args.connections, bench.args.low_connections)):
        plan = timed_plan(
            bench, bench.endpoints.live_orders, bench.orders_path(session_id), sku, connections
        )
        results.append(await measure(bench, f"decided_{connections}", bench.stack(), plan))
    return results


def sale_plan(bench: Bench, session_id: str, sku: str) -> WrkPlan:
    """Orders for `sku` in the session, at --connections for --duration."""
    return timed_plan(
        bench,
        bench.endpoints.live_orders,
        bench.orders_path(session_id),
        sku,
        bench.args.connections,
    )


async def scenario_sold_out(bench: Bench) -> list[ScenarioResult]:
    sku = new_sku()
    session_id = await open_sold_out_sale(bench, sku)
    before = await fast_path_count(bench)
    plan = sale_plan(bench, session_id, sku)
    result = await measure(bench, f"sold_out_{bench.args.connections}", bench.stack(), plan)
    after = await fast_path_count(bench)
    if before is not None and after is not None:
        result.extra["fast_path_rejections"] = int(after - before)
    return [result]


async def scenario_burst(bench: Bench, run: int) -> list[ScenarioResult]:
    args = bench.args
    sku = new_sku()
    tokens = mint_buyers(
        bench,
        bench.workdir / f"burst-buyers-{run}.txt",
        f"bench-{bench.nonce}-r{run}-burst",
        args.burst_buyers,
    )
    session_id = await bench.client.start_sale(
        sku,
        units=args.burst_units,
        host_id=HOST_ID,
        price_cents=100,
        per_user_limit=args.burst_per_user_limit,
    )
    plan = WrkPlan(
        base_url=bench.endpoints.live_orders,
        path=bench.orders_path(session_id),
        sku=sku,
        tokens_file=tokens,
        nonce=f"{bench.nonce}-{uuid.uuid4().hex[:8]}",
        connections=args.burst_connections,
        threads=args.threads,
        duration_s=args.burst_deadline,
        timeout_s=bench.timeout_s(),
        quota=args.burst_attempts,
        window_s=args.burst_window,
    )
    result = await measure(bench, "burst", bench.stack(), plan)
    stock = await bench.client.sku(sku)
    received, available = int(stock["received"]), int(stock["available"])
    reserved, sold = int(stock["reserved"]), int(stock["sold"])
    created = result.wrk.statuses.get(201, 0)
    result.extra.update(
        sku=sku,
        units=args.burst_units,
        attempts=args.burst_attempts,
        buyers=args.burst_buyers,
        window_s=args.burst_window,
        inventory={
            "received": received,
            "available": available,
            "reserved": reserved,
            "sold": sold,
        },
        checks={
            "no_5xx": result.wrk.errors_5xx == 0,
            "reserved_plus_sold_within_units": reserved + sold <= args.burst_units,
            "stock_conserved": available + reserved + sold == received,
            "created_within_units": created <= args.burst_units,
            "all_attempts_sent": result.wrk.sent == args.burst_attempts,
            "all_attempts_answered": result.wrk.answered == args.burst_attempts,
        },
    )
    return [result]


# ---------------------------------------------------------------------------- the run


@contextlib.contextmanager
def empty_handler(workdir: Path, loop: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = workdir / "empty_handler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.empty_handler", "--port", str(port), "--loop", loop],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("bench.empty_handler", lambda: http_ok(f"{url}/healthz"), 20, proc, log)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_all(bench: Bench) -> dict[str, int]:
    pids = {**bench.stack(), "empty_handler": bench.handler_pid}
    return {name: rss_kib(pid) for name, pid in pids.items()}


async def warm_up(bench: Bench, selected: Sequence[str]) -> None:
    """Untimed load on both order paths before anything is measured. Right after `make up`
    the broker's JIT compiler runs alongside the load: in one 10 s decided run on a fresh
    stack its C2 thread used 7.9 s of CPU, more than all its request threads together,
    and it kept compiling through four more runs (bench/RESULTS.md). What an order costs
    a broker that has been up for a while is what the figures are for."""
    seconds = bench.args.warmup_seconds
    if seconds <= 0 or not {"decided", "sold_out", "burst"} & set(selected):
        return
    print(f"warming up for {seconds}s (decided, then sold out; not measured) ...", flush=True)
    for open_sale in (open_decided_sale, open_sold_out_sale):
        sku = new_sku()
        session_id = await open_sale(bench, sku)
        plan = replace(sale_plan(bench, session_id, sku), duration_s=max(1, seconds // 2))
        await asyncio.to_thread(run_wrk, plan, bench.workdir, f"warmup-{open_sale.__name__}")


async def run_all(bench: Bench) -> dict[str, Any]:
    args = bench.args
    selected = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bench.buyer_tokens = mint_buyers(
        bench, bench.workdir / "buyers.txt", f"bench-{bench.nonce}-buyer", args.buyers
    )
    await warm_up(bench, selected)
    pids = {**bench.stack(), "empty_handler": bench.handler_pid}
    rss_idle = rss_all(bench)
    print(f"measuring idle CPU for {args.idle_seconds:g}s ...", flush=True)
    bench.idle = await idle_rates(pids, args.idle_seconds)
    runs: list[list[ScenarioResult]] = []
    for run in range(1, args.runs + 1):
        print(f"-- run {run}/{args.runs}", flush=True)
        results: list[ScenarioResult] = []
        for scenario in selected:
            if scenario == "l0":
                results += await scenario_l0(bench)
            elif scenario == "decided":
                results += await scenario_decided(bench)
            elif scenario == "sold_out":
                results += await scenario_sold_out(bench)
            else:
                results += await scenario_burst(bench, run)
        runs.append(results)
    # The broker keeps compiling and settling for a minute or more after `make up`, so an
    # idle rate read just before the first run can overstate its idle CPU, and subtracting
    # it understates what the load cost (to nothing, at times). The quieter of the readings
    # before and after the runs is each process's idle rate.
    print(f"measuring idle CPU again for {args.idle_seconds:g}s ...", flush=True)
    after = await idle_rates(pids, args.idle_seconds)
    bench.idle = {name: min(rate, after.get(name, rate)) for name, rate in bench.idle.items()}
    runs = [[result.with_idle(bench.idle) for result in results] for results in runs]
    rss_after = rss_all(bench)
    if args.profile and not bench.profiled:
        print(f"no scenario named {args.profile_scenario} ran: nothing profiled", flush=True)
    return record(
        args=vars(args),
        runs=runs,
        idle=bench.idle,
        rss_idle=rss_idle,
        rss_after=rss_after,
    )


async def main_async(args: argparse.Namespace) -> int:
    env = read_env_file(args.env_file)
    if "LC_JWT_SECRET" not in env:
        raise BenchError(f"{args.env_file} has no LC_JWT_SECRET: start the stack with `make up`")
    endpoints = Endpoints.from_env(env)
    stack_pids(args.run_dir)  # fail now, not after minting tokens, if the stack is down
    workdir = args.run_dir / "bench"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # L0 runs on the event loop the services run on (uvloop unless the stack says asyncio).
    args.l0_loop = args.l0_loop or env.get("LC_EVENT_LOOP") or default_loop()
    with empty_handler(workdir, args.l0_loop) as (handler_url, handler_pid):
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            bench = Bench(
                args=args,
                client=SaleClient(http, endpoints),
                http=http,
                endpoints=endpoints,
                run_dir=args.run_dir,
                workdir=workdir,
                nonce=uuid.uuid4().hex[:8],
                handler_url=handler_url,
                handler_pid=handler_pid,
                counted_ports=counted_ports(env),
            )
            entry = await run_all(bench)
    print()
    print(render(entry))
    history = RESULTS / "history.jsonl"
    append(history, entry)
    print(f"\nrecorded in {history.relative_to(ROOT)}; wrk output in {workdir}")
    # Timings never fail the run; a broken invariant of the launch burst does.
    broken = [
        f"run {index}: {check}"
        for index, run in enumerate(entry["runs"], 1)
        for check, ok in run.get("burst", {}).get("checks", {}).items()
        if not ok and check in INVARIANTS
    ]
    if broken:
        print(f"bench: launch burst invariants broken: {', '.join(broken)}", file=sys.stderr)
        return 3
    return 0


def counted_ports(env: Mapping[str, str]) -> dict[str, int]:
    """The broker's and Redis' ports on this machine (a remote or clustered one: none)."""
    ports: dict[str, int] = {}
    kafka = re.fullmatch(r"(?:127\.0\.0\.1|localhost):(\d+)", env.get("LC_KAFKA_BOOTSTRAP", ""))
    redis = re.fullmatch(
        r"rediss?://(?:[^@/]*@)?(?:127\.0\.0\.1|localhost):(\d+)(?:/\d*)?",
        env.get("LC_REDIS_URL", ""),
    )
    if kafka:
        ports["kafka"] = int(kafka.group(1))
    if redis:
        ports["redis"] = int(redis.group(1))
    return ports


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_stack_arguments(parser)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole set, interleaved")
    parser.add_argument(
        "--warmup-seconds",
        type=int,
        default=30,
        help="untimed load before measuring (the broker's JIT warms up); 0: none",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("-d", "--duration", type=int, default=10, help="s per timed scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--low-connections", type=int, default=8, help="decided path, 2nd run (0: none)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    add_order_arguments(parser, buyers_help="token pool (decided)")
    parser.add_argument("--burst-attempts", type=int, default=200_000)
    parser.add_argument("--burst-buyers", type=int, default=50_000)
    parser.add_argument("--burst-units", type=int, default=1_000)
    parser.add_argument("--burst-per-user-limit", type=int, default=2)
    parser.add_argument("--burst-window", type=float, default=10, help="s to offer them in")
    parser.add_argument("--burst-connections", type=int, default=256)
    parser.add_argument(
        "--burst-deadline", type=int, default=900, help="s before wrk is ended regardless"
    )
    parser.add_argument(
        "--l0-loop",
        choices=("uvloop", "asyncio"),
        help="event loop of the empty handler (default: the stack's LC_EVENT_LOOP, else uvloop)",
    )
    add_cpu_arguments(parser)
    parser.add_argument(
        "--profile", choices=PROFILEABLE, help="py-spy one process (redis: perf, with its forks)"
    )
    parser.add_argument(
        "--profile-scenario",
        help="l0, decided_<conns>, sold_out_<conns> or burst, first run only "
        "(default: decided_<--connections>)",
    )
    parser.add_argument("--profile-duration", type=int, help="s of sampling (default: --duration)")
    parser.add_argument(
        "--profile-pin",
        action="store_true",
        help="during the profiled scenario, the profiled process alone on the last core and "
        "everything else (stack, wrk, py-spy) on the others: py-spy then samples it only "
        "while it runs (its figures describe that pinned layout, and say so)",
    )
    args = parser.parse_args(argv)
    args.profile_scenario = args.profile_scenario or f"decided_{args.connections}"
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.duration < 1:
        parser.error("--runs and --duration must be at least 1")
    if args.burst_attempts < args.threads:
        parser.error("--burst-attempts must be at least --threads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except (BenchError, ProcError, WrkError, StackError, ApiError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
