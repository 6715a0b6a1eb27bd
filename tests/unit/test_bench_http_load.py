"""The load harness of `make bench` (bench/http_load.py) without the stack: wrk and its Lua
script against a recording aiohttp server in this process, /proc readings of local
processes, and the report's arithmetic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from bench import http_load, load_report, procstat
from bench.http_load import ScenarioResult, counted_ports
from bench.wrk_runner import WrkPlan, WrkResult, run_wrk, write_tokens

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


class Recorder:
    """An order endpoint that remembers (token, Idempotency-Key, body) of every request."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        self.seen: list[tuple[str, str, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            (
                request.headers["Authorization"].removeprefix("Bearer "),
                request.headers["Idempotency-Key"],
                await request.read(),
            )
        )
        return web.Response(body=self.body, status=self.status, content_type="application/json")


@contextlib.asynccontextmanager
async def serve(recorder: Recorder) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/sessions/{sid}/orders", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def plan(base_url: str, tokens: Path, **changes: Any) -> WrkPlan:
    values: dict[str, Any] = {
        "base_url": base_url,
        "path": "/v1/sessions/s1/orders?wait=5",
        "sku": "sku-1",
        "tokens_file": tokens,
        "nonce": "t",
        "connections": 6,
        "threads": 2,
        "duration_s": 30,
        "timeout_s": 10,
    }
    return WrkPlan(**{**values, **changes})


@needs_wrk
async def test_quota_mode_sends_exactly_the_attempts_with_unique_keys_spread_over_buyers(
    tmp_path: Path,
) -> None:
    recorder = Recorder(201, b'{"status":"reserved"}')
    tokens = tmp_path / "tokens.txt"
    write_tokens(tokens, (f"token-{i}" for i in range(10)))
    async with serve(recorder) as url:
        result = await asyncio.to_thread(
            run_wrk, plan(url, tokens, quota=1001, window_s=0.3), tmp_path, "quota"
        )
    assert (result.sent, result.answered, len(recorder.seen)) == (1001, 1001, 1001)
    assert result.statuses == Counter({201: 1001})
    assert len({key for _, key, _ in recorder.seen}) == 1001
    per_buyer = Counter(token for token, _, _ in recorder.seen)
    assert set(per_buyer) == {f"token-{i}" for i in range(10)}
    assert set(per_buyer.values()) <= {100, 101}
    assert {body for _, _, body in recorder.seen} == {b'{"sku":"sku-1","quantity":1}'}
    # Paced over the window, answered, and wrk ended early instead of sleeping out its -d.
    assert result.last_sent_s is not None and result.last_sent_s >= 0.2
    assert 0 < result.seconds < 10


@needs_wrk
async def test_timed_mode_counts_answers_by_status_and_reason(tmp_path: Path) -> None:
    recorder = Recorder(409, b'{"status": "rejected", "reason": "sold_out"}')
    tokens = tmp_path / "tokens.txt"
    write_tokens(tokens, ["a", "b", "c"])
    async with serve(recorder) as url:
        result = await asyncio.to_thread(run_wrk, plan(url, tokens, duration_s=1), tmp_path, "t")
    assert result.answered > 0
    assert result.statuses == Counter({409: result.answered})
    assert result.reasons == Counter({"sold_out": result.answered})
    assert result.sent >= result.answered  # the ones in flight at -d are not answered
    assert result.latency_ms["p50"] <= result.latency_ms["p99"]
    assert result.wrk_cpu_s > 0


def test_cpu_and_rss_of_a_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sample = procstat.sample_cpu({"me": os.getpid()})
        assert sample.ticks["me"] > 0  # this interpreter, and the child counted in
        assert procstat.rss_kib(os.getpid()) > 1000
    finally:
        child.kill()
        child.wait()


def test_pids_come_from_the_stacks_pid_files(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "redis.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "pids" / "kafka.pid").write_text("not a pid\n")
    assert procstat.read_pid(tmp_path, "redis") == os.getpid()
    assert procstat.read_pid(tmp_path, "kafka") is None
    assert procstat.read_pid(tmp_path, "notifier") is None
    with pytest.raises(procstat.ProcError, match="kafka, live_orders, inventory, notifier"):
        procstat.stack_pids(tmp_path)


async def test_an_idle_process_counts_as_caught_up_after_one_window() -> None:
    child = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        quiet = await procstat.wait_until_quiet(
            {"sleep": child.pid}, {}, margin_cores=0.1, window_s=0.5, deadline_s=10
        )
    finally:
        child.kill()
        await child.wait()
    assert quiet.settled
    assert 0.5 <= quiet.waited_s < 5


def fake(name: str, rate: float, cpu_s: float, **extra: Any) -> ScenarioResult:
    answered = int(rate * 10)
    return ScenarioResult(
        name=name,
        connections=64,
        wrk=WrkResult(
            seconds=10.0,
            answered=answered,
            sent=answered,
            statuses=Counter({201: answered}),
            reasons=Counter(),
            latency_ms={"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0, "mean": 1.0, "max": 5},
            socket_errors={"connect": 0, "read": 0, "write": 0, "timeout": 0},
            wrk_cpu_s=0.5,
            last_sent_s=None,
            raw={},
        ),
        cpu_s={"live_orders": cpu_s},
        cpu_raw_s={"live_orders": cpu_s},
        window_s=11.0,
        settled=True,
        settle_s=1.0,
        extra=dict(extra),
    )


def test_ratios_are_taken_within_each_run_and_figures_are_medians() -> None:
    runs = [
        [fake("l0", 10_000, 0.1), fake("decided_64", 500, 1.0)],
        [fake("l0", 5_000, 0.1), fake("decided_64", 400, 1.0)],
        [fake("l0", 8_000, 0.1), fake("decided_64", 800, 1.0)],
    ]
    entry = load_report.record(
        args={"duration": 10, "threads": 2, "settle_margin": 0.1, "settle_timeout": 120.0}
        | {"idle_seconds": 3.0, "env_file": Path(".run/stack.env")},
        runs=runs,
        idle={"live_orders": 0.01},
        rss_idle={"live_orders": 50_000},
        rss_after={"live_orders": 60_000},
    )
    assert [r["decided_64"] for r in entry["ratios_to_l0"]] == [0.05, 0.08, 0.1]
    decided = entry["medians"]["decided_64"]
    assert decided["ratio_to_l0"] == 0.08  # median of the per-run ratios, not of the rates
    assert decided["req_per_s"] == 500
    assert decided["cpu_us_per_answer"]["live_orders"] == pytest.approx(1e6 / 5000)
    # CPU per answer over L0's CPU per request, in each run: 200/1, 250/2, 125/1.25.
    assert [r["decided_64"] for r in entry["cpu_ratios_to_l0"]] == pytest.approx([200, 125, 100])
    assert decided["cpu_ratio_to_l0"] == pytest.approx(125)
    assert entry["args"]["env_file"] == ".run/stack.env"
    text = load_report.render(entry)
    assert "run 2: decided_64 0.080x" in text
    assert "run 1: decided_64 200.0x" in text
    assert "RSS MiB" in text


def test_a_later_idle_rate_is_subtracted_from_the_raw_cpu_and_never_below_zero() -> None:
    """Measured right after `make up`, the broker's idle rate is too high: the figures are
    recomputed from the raw CPU with the quieter reading."""
    result = fake("decided_64", 500, 2.0)  # 2.0 CPU-s raw over an 11 s window
    assert result.with_idle({"live_orders": 0.1}).cpu_s == {"live_orders": pytest.approx(0.9)}
    assert result.with_idle({"live_orders": 0.5}).cpu_s == {"live_orders": 0.0}
    assert result.with_idle({}).cpu_s == {"live_orders": 2.0}
    assert result.cpu_raw_s == {"live_orders": 2.0}


def test_segments_per_answer_are_medians_of_each_runs_count_over_its_answers() -> None:
    # fake(): 5,000 answers in each run (500/s for 10 s).
    runs = [
        [fake("sold_out_64", 500, 1.0, segments_sent={"live_orders": {"redis": 500, "kafka": 5}})],
        [fake("sold_out_64", 500, 1.0, segments_sent={"live_orders": {"redis": 1000, "kafka": 0}})],
        [fake("sold_out_64", 500, 1.0, segments_sent={"live_orders": {"redis": 750, "kafka": 10}})],
    ]
    entry = load_report.record(
        args={"duration": 10, "threads": 2, "settle_margin": 0.1, "settle_timeout": 120.0}
        | {"idle_seconds": 3.0, "env_file": Path(".run/stack.env")},
        runs=runs,
        idle={},
        rss_idle={"live_orders": 50_000},
        rss_after={"live_orders": 60_000},
    )
    per = entry["medians"]["sold_out_64"]["segments_per_answer"]
    assert per == {"live_orders": {"redis": pytest.approx(0.15), "kafka": pytest.approx(0.001)}}
    text = load_report.render(entry)
    assert "live_orders > redis" in text
    assert "0.15" in text


def test_the_counted_ports_are_the_local_brokers_and_redis() -> None:
    assert counted_ports(
        {"LC_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "LC_REDIS_URL": "redis://127.0.0.1:6379/0"}
    ) == {"kafka": 9092, "redis": 6379}
    assert counted_ports(
        {"LC_KAFKA_BOOTSTRAP": "localhost:19092", "LC_REDIS_URL": "rediss://u:p@localhost:6380"}
    ) == {"kafka": 19092, "redis": 6380}
    # A cluster (several brokers, Redis Cluster nodes): nothing is counted.
    assert (
        counted_ports(
            {
                "LC_KAFKA_BOOTSTRAP": "127.0.0.1:9092,127.0.0.1:9093",
                "LC_REDIS_URL": "redis://x:7000",
            }
        )
        == {}
    )


needs_perf = pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed")


@needs_perf
def test_perf_records_a_process_and_the_children_it_forks(tmp_path: Path) -> None:
    """`--profile redis`: a parent that forks a busy child while it is recorded shows up
    in the report as two pids, the way an AOF rewrite shows up beside redis-server."""
    busy = (
        "import os, time\n"
        "time.sleep(0.3)\n"
        "if os.fork() == 0:\n"
        "    end = time.monotonic() + 1.0\n"
        "    while time.monotonic() < end: pass\n"
        "    os._exit(0)\n"
        "end = time.monotonic() + 1.5\n"
        "while time.monotonic() < end: pass\n"
        "os.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", busy])
    data = tmp_path / "redis-x.perf.data"
    try:
        command = http_load.perf_record_command(
            shutil.which("perf") or "perf", parent.pid, data, 1.2
        )
        assert "--no-inherit" not in command and command[command.index("-p") + 1] == str(parent.pid)
        recorded = subprocess.run(command, capture_output=True, check=False)
        assert recorded.returncode == 0, recorded.stderr.decode()[-500:]
    finally:
        parent.wait(timeout=10)
    report = tmp_path / "redis-x.txt"
    assert http_load.perf_report(data, report)
    pids = {int(pid) for pid in re.findall(r"%\s+(\d+):python", report.read_text())}
    assert parent.pid in pids and len(pids) == 2, report.read_text()[:2000]


def test_profiling_redis_without_perf_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_load.shutil, "which", lambda name, **_: None)
    args = SimpleNamespace(profile="redis", profile_duration=None)
    plan = SimpleNamespace(duration_s=1)
    with pytest.raises(http_load.BenchError, match="linux-perf"):
        http_load.start_perf(args, "sold_out_64", plan, 1)  # type: ignore[arg-type]
