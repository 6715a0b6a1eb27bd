"""`make bench-scale`: decided orders/s and sold-out rejections/s with one and with two
processes of every service, on this machine (issue #11, the horizontal figure).

Against the running stack (`make up`: `.run/stack.env`, pids in `.run/pids/`):

  1 process    the stack as `make up` runs it. The second set is stopped, not left idle:
               an idle second set still polls the broker, heartbeats, sweeps and holds half
               the partitions, so the "1 process" figure would really be a two-process stack
               with the load on one.
  2 processes  a second live_orders, inventory and notifier started next to it (the same
               environment, free HTTP ports, LC_INSTANCE_ID `<service>-2`, logs in
               `<run dir>/logs/<service>-2.log`, pids in `<run dir>/pids/`); they join the
               same consumer groups, which rebalance over the topics' partitions.

Before every measurement each consumer group must be Stable with that many members and
have committed everything on its partitions. In both layouts the load is the same: two wrk
instances side by side (--connections split between them, --threads each), each on a sale
of its own (a fresh session and SKU per measurement, its own buyers), wrk instance i
sending to live_orders process i (with one process, both to it). The two SKUs are chosen
so that, with two processes, each consumer group hands them to different members (a SKU's
events all go to one partition: one SKU is handled by one inventory process however many
run). Scenarios, as `make bench` sets them up (bench/order_load.py):

  decided    ample stock: every answer a 201 decided by inventory over Kafka
  sold_out   one unit, sold: every answer a 409 sold_out from live_orders' fast path

For each: answers/s (the two instances' sum), p50/p99 from their combined latency
histograms (wrk's 1 µs buckets added up, wrk's percentile rule), CPU µs per answer of every
process (Kafka, Redis, both copies of each service; from /proc, after the consumers caught
up, each layout's own idle rate subtracted), the cores they kept busy while wrk ran, and
wrk's own CPU. `--runs N` alternates the layouts (1,2 then 2,1, ...: each start or stop of
the second set is a rebalance, and drift hits both alike); the table shows medians and the
2-process/1-process ratio of answers/s taken within each run.

What 2 cores cap: two processes of each service, both wrk instances, the broker and Redis
all run on the same 2 cores, and a second process cannot add CPU that is not there. When
one process of each already keeps both cores busy, the ratio shows whether splitting the
work costs throughput (a shared lock, a serialisation point, a hot key would show as a
ratio well below 1 and CPU per answer rising); it shows a gain only where one process left
cores idle (waiting on Kafka or Redis round trips). The figure says the software scales
out; how far is a question for a machine with more cores.

    python -m bench.scale_out --env-file .run/stack.env [-d 10 --runs 3]

Prints figures and appends a JSON line (`"bench": "scale_out"`) to
bench/results/history.jsonl; never fails on a timing. Exit status 1: the stack is not
running, wrk is missing, a second process or a sale could not be set up, or the groups did
not settle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench.flash_sale import ApiError, Endpoints, SaleClient
from bench.kafka_groups import Broker, Group, GroupsNotSettled, key_owners, spread_keys
from bench.load_report import (
    answers,
    append,
    cpu_table,
    fmt,
    medians,
    progress_line,
    provenance,
    scenario_dict,
    table,
    unexpected,
)
from bench.order_load import (
    BenchError,
    OrderLoad,
    ScenarioResult,
    add_cpu_arguments,
    add_order_arguments,
    add_stack_arguments,
    fast_path_count,
    mint_buyers,
    open_decided_sale,
    open_sold_out_sale,
    timed_plan,
)
from bench.procstat import STACK, ProcError, idle_rates, stack_pids
from bench.wrk_runner import WrkError, WrkResult, merge_results, run_wrk, split_connections
from deploy.local import stack
from deploy.local.stack import (
    ROOT,
    SERVICES,
    StackError,
    _write_pid,
    free_port,
    http_ok,
    read_env_file,
    start_service,
    stop_process,
    wait_until,
)
from services.common.kafka_topics import Topics
from services.common.settings import Settings

HISTORY = Path(__file__).resolve().parent / "results" / "history.jsonl"
SCENARIOS = ("decided", "sold_out")
LAYOUTS = (1, 2)  # processes of every service
LANES = 2  # wrk instances, in both layouts
SECOND = "-2"  # the second processes' names: live_orders-2, ... (pid files, logs)


class Interrupted(Exception):
    """SIGTERM: leave like Ctrl-C does, stopping the second processes on the way."""


# ---------------------------------------------------------------------------- pure parts


def layout_order(run: int) -> tuple[int, ...]:
    """Run 1 measures 1 then 2 processes, run 2 measures 2 then 1, and so on: the layout
    changes once per run, and neither always goes first."""
    return LAYOUTS if run % 2 == 1 else tuple(reversed(LAYOUTS))


def scenario_name(scenario: str, processes: int) -> str:
    return f"{scenario}_{processes}p"


def layout_of(result: ScenarioResult) -> int:
    """The processes of each service a result was measured with (`scenario_name`)."""
    return int(result.name.rsplit("_", 1)[1].removesuffix("p"))


def lane_urls(live_orders: Sequence[str], lanes: int) -> list[str]:
    """wrk instance i -> live_orders process i, round robin when there are fewer."""
    return [live_orders[i % len(live_orders)] for i in range(lanes)]


def scale_ratios(run: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Answers/s with 2 processes over answers/s with 1, per scenario, within one run."""
    ratios = {}
    for scenario in SCENARIOS:
        one = run.get(scenario_name(scenario, 1))
        two = run.get(scenario_name(scenario, 2))
        if one and two and one["req_per_s"]:
            ratios[scenario] = float(two["req_per_s"]) / float(one["req_per_s"])
    return ratios


def process_names(processes: int) -> tuple[str, ...]:
    """The processes measured in a layout, as their pid files name them."""
    if processes == 1:
        return STACK
    return ("kafka", "redis", *(n for s in SERVICES for n in (s, s + SECOND)))


# ---------------------------------------------------------------------------- second set


@dataclass
class SecondProcesses:
    """A second process of every service next to a running stack: the stack's environment
    with a free HTTP port each; stopped with SIGTERM (they leave their groups)."""

    run_dir: Path
    env: Mapping[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [name + SECOND for name in SERVICES]

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def clear_leftovers(self) -> None:
        """Stop second processes a killed earlier run left behind (by their pid files):
        they would sit in the groups and take partitions."""
        stack.down(self.run_dir, self.names)

    def start(self, deadline_s: float = 90) -> None:
        for name in SERVICES:
            instance = name + SECOND
            port = free_port()
            self.procs[name] = start_service(
                name,
                {**self.env, f"LC_{name.upper()}_PORT": str(port), "LC_INSTANCE_ID": instance},
                self._log(name),
            )
            self.urls[name] = f"http://127.0.0.1:{port}"
            _write_pid(instance, self.procs[name].pid, self.run_dir)
        for name, proc in self.procs.items():
            url = self.urls[name]
            wait_until(
                f"{name}{SECOND} /readyz",
                lambda url=url: http_ok(f"{url}/readyz"),
                deadline_s,
                proc,
                self._log(name),
            )

    def stop(self) -> None:
        if not self.procs:
            return

        def stop_one(name: str, proc: subprocess.Popen[bytes]) -> None:
            stop_process(proc)
            (self.run_dir / "pids" / f"{name}{SECOND}.pid").unlink(missing_ok=True)

        # Side by side: each takes a second or two to finish its batch and leave its group.
        with ThreadPoolExecutor(len(self.procs)) as pool:
            for future in [pool.submit(stop_one, n, p) for n, p in self.procs.items()]:
                future.result()
        self.procs.clear()
        self.urls.clear()

    def _log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}{SECOND}.log"


# ---------------------------------------------------------------------------- the bench


@dataclass(kw_only=True)
class ScaleBench(OrderLoad):
    second: SecondProcesses
    broker: Broker
    topics: Topics
    groups: tuple[str, ...]
    partition_counts: dict[str, int]
    lane_tokens: list[Path] = field(default_factory=list)
    idle_by_layout: dict[int, dict[str, float]] = field(default_factory=dict)

    def live_orders(self, processes: int) -> list[str]:
        urls = [self.endpoints.live_orders]
        if processes == 2:
            urls.append(self.second.urls["live_orders"])
        return urls

    def pids(self, processes: int) -> dict[str, int]:
        return stack_pids(self.run_dir, process_names(processes))

    async def settled_groups(self, processes: int) -> dict[str, Group]:
        return await self.broker.wait_settled(
            dict.fromkeys(self.groups, processes), self.args.group_timeout
        )


async def set_layout(bench: ScaleBench, processes: int) -> None:
    """Start or stop the second set; wait for the groups; the layout's idle CPU, once."""
    if processes == 2 and not bench.second.running:
        print("starting a second live_orders, inventory and notifier ...", flush=True)
        await asyncio.to_thread(bench.second.start)
    elif processes == 1 and bench.second.running:
        print("stopping the second processes ...", flush=True)
        await asyncio.to_thread(bench.second.stop)
    groups = await bench.settled_groups(processes)
    for group in groups.values():
        print(f"  {group.describe()}", flush=True)
    # Every time: the broker settles for a minute or more after `make up`, so the first
    # reading can overstate its idle CPU; the quietest reading of a layout is its idle rate
    # (and the results are recomputed with it at the end, `run_all`).
    print(
        f"measuring idle CPU ({processes} process(es)) for {bench.args.idle_seconds:g}s ...",
        flush=True,
    )
    rates = await idle_rates(bench.pids(processes), bench.args.idle_seconds)
    known = bench.idle_by_layout.get(processes, rates)
    bench.idle_by_layout[processes] = {n: min(r, known.get(n, r)) for n, r in rates.items()}


@dataclass(frozen=True)
class Lane:
    url: str  # the live_orders process this wrk instance sends to
    sku: str
    session_id: str
    connections: int
    tokens: Path
    members: dict[str, list[str]]  # group -> the members the SKU's events go to


async def open_lanes(bench: ScaleBench, scenario: str, processes: int) -> list[Lane]:
    groups = await bench.settled_groups(processes)
    owners = {name: group.owners() for name, group in groups.items()}
    key_topics = (bench.topics.orders, bench.topics.inventory)
    skus = spread_keys(
        f"scale-{uuid.uuid4().hex[:8]}",
        LANES,
        owners=owners,
        partition_counts=bench.partition_counts,
        topics=key_topics,
    )
    shares = split_connections(bench.args.connections, LANES, bench.args.threads)
    lanes = []
    for index, (url, sku) in enumerate(
        zip(lane_urls(bench.live_orders(processes), LANES), skus, strict=True)
    ):
        if scenario == "decided":
            session_id = await open_decided_sale(bench, sku, live_orders_url=url)
        else:
            session_id = await open_sold_out_sale(bench, sku, live_orders_url=url)
        got = key_owners(sku, owners, bench.partition_counts, key_topics)
        lanes.append(
            Lane(
                url=url,
                sku=sku,
                session_id=session_id,
                connections=shares[index],
                tokens=bench.lane_tokens[index],
                members={group: sorted(members) for group, members in got.items()},
            )
        )
    return lanes


def spread_across_members(lanes: Sequence[Lane], processes: int) -> bool:
    """Every group hands the lanes' SKUs to different members (trivially so with one)."""
    if processes == 1:
        return True
    groups = {group for lane in lanes for group in lane.members}
    for group in groups:
        seen: set[str] = set()
        for lane in lanes:
            members = set(lane.members.get(group, []))
            if not members or members & seen:
                return False
            seen |= members
    return True


async def measure(bench: ScaleBench, scenario: str, processes: int) -> ScenarioResult:
    name = scenario_name(scenario, processes)
    lanes = await open_lanes(bench, scenario, processes)
    await bench.settled_groups(processes)  # the sales' set-up events handled too
    plans = [
        timed_plan(
            bench,
            lane.url,
            bench.orders_path(lane.session_id),
            lane.sku,
            lane.connections,
            tokens=lane.tokens,
            histogram=True,
        )
        for lane in lanes
    ]
    urls = bench.live_orders(processes)
    counted = [await fast_path_count(bench, url) for url in urls]

    async def load() -> list[WrkResult]:
        return list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(run_wrk, plan, bench.workdir, f"{name}-{i + 1}")
                    for i, plan in enumerate(plans)
                )
            )
        )

    results, cpu = await bench.measure(
        bench.pids(processes), load, idle=bench.idle_by_layout[processes]
    )
    merged = merge_results(results)
    extra: dict[str, Any] = {
        "processes": processes,
        "latency_from": merged.raw["latency_from"],
        "busy_cores": cpu.busy_cores(),
        "load_s": cpu.load_s,
        "spread": spread_across_members(lanes, processes),
        "lanes": [
            {
                "live_orders": lane.url,
                "sku": lane.sku,
                "connections": lane.connections,
                "members": lane.members,
                "req_per_s": result.rate,
                "answered": result.answered,
                "p99_ms": result.latency_ms.get("p99"),
            }
            for lane, result in zip(lanes, results, strict=True)
        ],
    }
    if scenario == "sold_out":
        moved = [await fast_path_count(bench, url) for url in urls]
        if all(n is not None for n in (*counted, *moved)):
            extra["fast_path_rejections"] = int(
                sum(after or 0 for after in moved) - sum(before or 0 for before in counted)
            )
    result = ScenarioResult.of(
        name, sum(lane.connections for lane in lanes), merged, cpu, extra=extra
    )
    print(progress_line(result), flush=True)
    return result


async def run_all(bench: ScaleBench) -> dict[str, Any]:
    args = bench.args
    selected = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bench.lane_tokens = [
        mint_buyers(
            bench,
            bench.workdir / f"buyers-{i + 1}.txt",
            f"bench-{bench.nonce}-w{i + 1}",
            args.buyers,
        )
        for i in range(LANES)
    ]
    runs: list[list[ScenarioResult]] = []
    for run in range(1, args.runs + 1):
        results: list[ScenarioResult] = []
        for processes in layout_order(run):
            print(f"-- run {run}/{args.runs}, {processes} process(es) of each service", flush=True)
            await set_layout(bench, processes)
            for scenario in selected:
                results.append(await measure(bench, scenario, processes))
        runs.append(results)
    await set_layout(bench, 1)  # leave the stack as it was found
    runs = [
        [result.with_idle(bench.idle_by_layout[layout_of(result)]) for result in results]
        for results in runs
    ]
    return record(
        args=vars(args),
        runs=runs,
        idle_by_layout=bench.idle_by_layout,
        partition_counts=bench.partition_counts,
    )


# ---------------------------------------------------------------------------- record, render


def record(
    *,
    args: Mapping[str, Any],
    runs: Sequence[Sequence[ScenarioResult]],
    idle_by_layout: Mapping[int, Mapping[str, float]],
    partition_counts: Mapping[str, int],
) -> dict[str, Any]:
    by_name = [{r.name: scenario_dict(r) for r in run} for run in runs]
    ratios = [scale_ratios(run) for run in by_name]
    return {
        **provenance(args),
        "bench": "scale_out",
        "partitions": dict(partition_counts),
        "idle_cpu_cores": {str(k): dict(v) for k, v in sorted(idle_by_layout.items())},
        "runs": by_name,
        "ratios": ratios,
        "medians": medians(by_name),
        "median_ratios": {
            scenario: statistics.median(r[scenario] for r in ratios if scenario in r)
            for scenario in SCENARIOS
            if any(scenario in r for r in ratios)
        },
    }


def render(entry: Mapping[str, Any]) -> str:
    runs: list[dict[str, Any]] = entry["runs"]
    meds: dict[str, dict[str, Any]] = entry["medians"]
    args = entry["args"]
    m = entry["machine"]
    last = runs[-1]
    out = [
        f"make bench-scale — {entry['date']}  commit {entry['git_commit'][:10]}"
        f"{' (dirty)' if entry['git_dirty'] else ''}  nproc {m['nproc']}  {m['wrk']}",
        f"{len(runs)} run(s), {args['duration']} s per measurement; {args['connections']} "
        f"connections over {LANES} wrk instances ({args['threads']} thread(s) each) in both "
        "layouts, instance i -> live_orders process i",
        "1 process: the stack as `make up` runs it (the second set stopped); 2 processes: a "
        "second live_orders, inventory and notifier in the same consumer groups",
        "figures are medians over runs; 2/1 ratios are taken within each run",
        "topics: " + ", ".join(f"{t} {n} partitions" for t, n in entry["partitions"].items()),
    ]
    few = [t for t, n in entry["partitions"].items() if n < LANES]
    if few:
        out.append(
            f"NOTE: {', '.join(few)} ha{'s' if len(few) == 1 else 've'} fewer than {LANES} "
            "partitions: a consumer group spreads over partitions only, so the second "
            "consumer of each group gets nothing there (LC_TOPIC_PARTITIONS, default 12, "
            "applies when a topic is created)"
        )
    out.append("")
    rows = []
    for name, med in meds.items():
        s = last[name]
        rows.append(
            [
                name,
                str(s["processes"]),
                fmt(med["req_per_s"]),
                fmt(med["p50_ms"], 1),
                fmt(med["p99_ms"], 1),
                str(sum(s["socket_errors"].values())),
                fmt(statistics.median(r[name]["busy_cores"] for r in runs if name in r), 2),
                fmt(med["cpu_us_per_answer_total"]),
                fmt(med["wrk_cpu_us_per_answer"]),
            ]
        )
    out.append(
        table(
            [
                "scenario",
                "processes",
                "answers/s",
                "p50 ms",
                "p99 ms",
                "sock err (last)",
                "cores busy",
                "CPU µs/answer",
                "wrk µs/answer",
            ],
            rows,
        )
    )
    out.append("")
    ratio_line = ", ".join(f"{k} {v:.3f}x" for k, v in entry["median_ratios"].items())
    out.append(f"2 processes / 1 process, answers/s (median of the per-run ratios): {ratio_line}")
    for index, ratios in enumerate(entry["ratios"], 1):
        out.append(f"  run {index}: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()))
    out.append("")
    out.append("answers by status (last run):")
    for name, s in last.items():
        out.append(f"  {name:<12} {answers(s['statuses'], s['reasons'])}{unexpected(name, s)}")
        if "fast_path_rejections" in s:
            out.append(
                f"  {'':<12} the live_orders fast-path counters moved by "
                f"{s['fast_path_rejections']:,} ({s['sent']:,} sent)"
            )
    out.append("")
    out.append(
        "wrk instances (last run): live_orders, SKU, the members its events went to "
        "(live_orders, inventory, notifier groups), answers/s, p99"
    )
    for name, s in last.items():
        for index, lane in enumerate(s["lanes"], 1):
            members = "; ".join(
                ",".join(lane["members"].get(g, [])) for g in sorted(lane["members"])
            )
            out.append(
                f"  {name:<12} {index}: {lane['live_orders']}  {lane['sku']}  [{members}]  "
                f"{fmt(lane['req_per_s'])}/s  p99 {fmt(lane['p99_ms'], 1)} ms"
            )
        if not s["spread"]:
            out.append(
                f"  {'':<12} NOT spread: a group hands both SKUs to one member (too few "
                "partitions?), so that member's process does the work of both"
            )
    latency_from = {s["latency_from"] for run in runs for s in run.values()}
    out.append(
        f"  p50/p99 from the {LANES} instances' "
        + (
            "combined latency histograms (wrk's 1 µs buckets added up, wrk's percentile rule)"
            if latency_from == {"combined histograms"}
            else "results: the worse instance's figure"
        )
    )
    out.append("")
    processes = [
        p for p in process_names(2) if any(p in med["cpu_us_per_answer"] for med in meds.values())
    ]
    out.append("CPU µs per answered request, per process (median over runs):")
    out.append(cpu_table(meds, processes))
    idle = "; ".join(
        f"{layout} process(es): " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in rates.items())
        for layout, rates in entry["idle_cpu_cores"].items()
    )
    settle = ", ".join(
        f"{name} {s['settle_s']:.1f}s{'' if s['settled'] else ' (NOT settled)'}"
        for name, s in last.items()
    )
    out.append(
        "  attribution as `make bench`: utime+stime from /proc/<pid>/stat before the load and "
        f"once the CPU rate fell back to idle + {args['settle_margin']} core; each layout's idle "
        f"CPU (quietest 1 s of {args['idle_seconds']:g} s, % of a core) subtracted: {idle}. "
        f"Waited after the load (last run): {settle}. cores busy: the measured processes' "
        "CPU while wrk ran (wrk's not included)."
    )
    out.append("")
    out.append(
        f"{m['nproc']} core(s) carry all of it: both copies of every service, the broker, "
        "Redis and wrk. A second process cannot add CPU that is not there: a ratio near "
        "1.0 with the cores busy says splitting the work costs nothing (no shared lock or "
        "serialisation), above 1.0 is what one process left idle."
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace, second: SecondProcesses) -> int:
    env = dict(second.env)
    endpoints = Endpoints.from_env(env)
    settings = Settings.from_env("live_orders", env)
    topics = Topics.with_prefix(settings.topic_prefix)
    stack_pids(args.run_dir)  # fail now, not after minting tokens, if the stack is down
    await asyncio.to_thread(second.clear_leftovers)
    workdir = args.run_dir / "bench-scale"
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.iterdir():
        if stale.is_file():
            stale.unlink()
    async with (
        Broker(settings) as broker,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        ) as http,
    ):
        counts = await broker.partition_counts(topics.all())
        bench = ScaleBench(
            args=args,
            client=SaleClient(http, endpoints),
            http=http,
            endpoints=endpoints,
            run_dir=args.run_dir,
            workdir=workdir,
            nonce=uuid.uuid4().hex[:8],
            second=second,
            broker=broker,
            topics=topics,
            # Each service consumes in the group named after it (web_app.consumer_for).
            groups=tuple(f"{settings.topic_prefix}{name}" for name in SERVICES),
            partition_counts={t: counts[t] for t in topics.all() if t in counts},
        )
        few = [t for t in (topics.orders, topics.inventory) if counts.get(t, 0) < LANES]
        if few:
            print(
                f"note: {', '.join(few)} has fewer than {LANES} partitions: the consumer "
                "groups cannot spread there, a second inventory and notifier get no work"
            )
        entry = await run_all(bench)
    print()
    print(render(entry))
    append(HISTORY, entry)
    print(f"\nrecorded in {HISTORY.relative_to(ROOT)}; wrk output in {workdir}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_stack_arguments(parser)
    parser.add_argument("--runs", type=int, default=1, help="repeat both layouts, alternating")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("-d", "--duration", type=int, default=10, help="s per measurement")
    parser.add_argument(
        "--connections", type=int, default=64, help=f"in total, split over {LANES} wrk instances"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of each wrk instance")
    add_order_arguments(parser, buyers_help="token pool of each wrk instance")
    add_cpu_arguments(parser)
    parser.add_argument(
        "--group-timeout",
        type=float,
        default=120,
        help="s for the consumer groups to settle (Stable, every member, nothing uncommitted)",
    )
    args = parser.parse_args(argv)
    unknown = {s.strip() for s in args.scenarios.split(",")} - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.duration < 1:
        parser.error("--runs and --duration must be at least 1")
    try:
        split_connections(args.connections, LANES, args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = read_env_file(args.env_file)
    if "LC_JWT_SECRET" not in env:
        print(
            f"bench: {args.env_file} has no LC_JWT_SECRET: start the stack with `make up`",
            file=sys.stderr,
        )
        return 1
    second = SecondProcesses(args.run_dir, env)
    # The second processes run in sessions of their own (a Ctrl-C in the terminal does not
    # reach them): they are stopped here whatever ends the run.
    with sigterm_interrupts():
        try:
            return asyncio.run(main_async(args, second))
        except (BenchError, ProcError, WrkError, StackError, ApiError, GroupsNotSettled) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, Interrupted):
            print("bench: interrupted", file=sys.stderr)
            return 130
        finally:
            second.stop()


if __name__ == "__main__":
    sys.exit(main())
