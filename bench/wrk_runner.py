"""Run wrk with bench/wrk/orders.lua and read back what it measured.

wrk is the load generator of `make bench` (bench/http_load.py): a C event loop per thread,
so the generator is not what limits the figures. Its Lua script counts answers by status
per thread and writes one JSON object at the end (`done()`), which `run_wrk` parses into a
`WrkResult`, together with wrk's own CPU time (from wait4's rusage).

`make bench-scale` (bench/scale_out.py) runs several wrk instances side by side, one per
live_orders process: `split_connections` shares the connections out, `merge_results`
adds their results up into one (latency from their combined histograms).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCRIPT = Path(__file__).resolve().parent / "wrk" / "orders.lua"


class WrkError(RuntimeError):
    """wrk is missing, failed, or wrote no result; the message says why."""


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(
            "wrk not found on PATH: `make system-deps` installs it (Debian: apt-get install wrk)"
        )
    return path


def write_tokens(path: Path, tokens: Iterable[str]) -> int:
    """One bearer token per line, as orders.lua reads them; the number written."""
    lines = list(tokens)
    path.write_text("".join(f"{token}\n" for token in lines))
    return len(lines)


@dataclass(frozen=True)
class WrkPlan:
    """One wrk run. `quota` 0: timed (`duration_s`); otherwise exactly `quota` requests in
    total, paced over `window_s`, and wrk is ended once every thread has all its answers
    (or at `duration_s`, the deadline)."""

    base_url: str  # scheme://host:port
    path: str  # with the query string
    sku: str
    tokens_file: Path
    nonce: str  # makes the Idempotency-Keys of this run unique
    connections: int
    threads: int
    duration_s: int
    timeout_s: int
    quota: int = 0
    window_s: float = 0.0
    histogram: bool = False  # also return wrk's whole latency histogram (merge_results)


@dataclass(frozen=True)
class WrkResult:
    seconds: float  # wrk's own run time (timed), or first send to last answer (quota)
    answered: int
    sent: int
    statuses: Counter[int]
    reasons: Counter[str]  # `reason` of the 409 answers
    latency_ms: dict[str, float]  # p50 p90 p99 p999 mean max, from wrk's histogram
    socket_errors: dict[str, int]  # connect read write timeout
    wrk_cpu_s: float
    last_sent_s: float | None  # quota: seconds from the first send to the last one
    raw: dict[str, Any]
    # WrkPlan.histogram: answers per latency in whole µs (wrk's buckets), else None
    histogram_us: dict[int, int] | None = None

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors_5xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())


def _config_text(plan: WrkPlan, out: Path, done_dir: Path) -> str:
    values = {
        "path": plan.path,
        "sku": plan.sku,
        "tokens": str(plan.tokens_file),
        "nonce": plan.nonce,
        "threads": str(plan.threads),
        "quota": str(plan.quota),
        "window_s": repr(plan.window_s),
        "histogram": "1" if plan.histogram else "0",
        "out": str(out),
        "done_dir": str(done_dir),
    }
    for key, value in values.items():
        # orders.lua reads key=value lines; a line break would cut a value short.
        if "\n" in value or "\r" in value:
            raise WrkError(f"wrk config value {key}={value!r} holds a line break")
    return "".join(f"{key}={value}\n" for key, value in values.items())


def run_wrk(plan: WrkPlan, workdir: Path, label: str) -> WrkResult:
    """Run wrk once (blocking); its output goes to `workdir/<label>.wrk.txt`."""
    if plan.quota and plan.quota < plan.threads:
        raise WrkError(f"quota {plan.quota} is smaller than the {plan.threads} wrk threads")
    if plan.connections < plan.threads:
        raise WrkError(f"{plan.connections} connections for {plan.threads} wrk threads")
    out = workdir / f"{label}.result.json"
    done_dir = workdir / f"{label}.done"
    done_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out, *done_dir.iterdir()):
        stale.unlink(missing_ok=True)
    config = workdir / f"{label}.config"
    config.write_text(_config_text(plan, out, done_dir))
    log = workdir / f"{label}.wrk.txt"
    command = [
        wrk_binary(),
        "--threads",
        str(plan.threads),
        "--connections",
        str(plan.connections),
        "--duration",
        f"{plan.duration_s}s",
        "--timeout",
        f"{plan.timeout_s}s",
        "--latency",
        "--script",
        str(SCRIPT),
        plan.base_url + plan.path,
    ]
    with log.open("wb") as stdout:
        proc = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BENCH_WRK_CONFIG": str(config)},
        )
        rusage = _wait(proc, plan, done_dir)
    if proc.returncode != 0 or not out.exists():
        text = log.read_text(errors="replace")[-2000:]
        raise WrkError(f"wrk exited with {proc.returncode} and no result; its output:\n{text}")
    raw = orjson.loads(out.read_bytes())
    # Without what reading out its histogram cost (done(), after the load), so wrk's CPU
    # per answer means the same with and without WrkPlan.histogram.
    dump_s = float(raw.get("histogram_cpu_s", 0.0))
    return _result(plan, raw, max(0.0, rusage.ru_utime + rusage.ru_stime - dump_s))


def _wait(proc: subprocess.Popen[bytes], plan: WrkPlan, done_dir: Path) -> Any:
    """Reap wrk with wait4 (its rusage is its CPU time). In quota mode, SIGINT ends wrk's
    sleep through -d as soon as every thread left its marker (the threads have stopped; wrk
    then reports and calls done()); the signal is repeated because wrk only installs its
    handler after starting the threads."""
    deadline = time.monotonic() + plan.duration_s + 60
    interrupted_at = 0.0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return rusage
        now = time.monotonic()
        if now > deadline:
            proc.kill()
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise WrkError(f"wrk still running {plan.duration_s + 60}s after its start: killed")
        all_done = plan.quota and len(list(done_dir.glob("thread-*.done"))) >= plan.threads
        if all_done and now - interrupted_at > 0.5:
            proc.send_signal(signal.SIGINT)
            interrupted_at = now
        time.sleep(0.05)


def _result(plan: WrkPlan, raw: dict[str, Any], wrk_cpu_s: float) -> WrkResult:
    threads = list(raw.get("threads", {}).values())
    statuses: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    for thread in threads:
        statuses.update({int(k): int(v) for k, v in thread.get("statuses", {}).items()})
        reasons.update({k: int(v) for k, v in thread.get("reasons", {}).items()})
    answered = sum(int(t.get("answered", 0)) for t in threads)
    sent = sum(int(t.get("sent", 0)) for t in threads)
    latency = {k: float(v) / 1000 for k, v in raw["latency_us"].items() if v is not None}
    errors = raw.get("errors", {})
    socket_errors = {k: int(errors.get(k, 0)) for k in ("connect", "read", "write", "timeout")}
    last_sent_s: float | None = None
    if plan.quota:
        firsts = [t["first_sent"] for t in threads if "first_sent" in t]
        lasts = [t["last_answer"] for t in threads if "last_answer" in t]
        sends = [t["last_sent"] for t in threads if "last_sent" in t]
        start = min(firsts) if firsts else 0.0
        seconds = max(lasts) - start if lasts else 0.0
        last_sent_s = max(sends) - start if sends else None
    else:
        seconds = float(raw["duration_us"]) / 1e6
    buckets = raw.get("latency_histogram_us")
    return WrkResult(
        seconds=seconds,
        answered=answered,
        sent=sent,
        statuses=statuses,
        reasons=reasons,
        latency_ms=latency,
        socket_errors=socket_errors,
        wrk_cpu_s=wrk_cpu_s,
        last_sent_s=last_sent_s,
        raw=raw,
        histogram_us=None if buckets is None else {int(k): int(v) for k, v in buckets.items()},
    )


# ---------------------------------------------------------------------------- side by side


PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
# How merge_results arrived at the latency figures (WrkResult.raw["latency_from"]).
FROM_HISTOGRAMS = "combined histograms"
FROM_WORST = "worst instance"


def split_connections(total: int, parts: int, threads: int) -> list[int]:
    """`total` connections shared out over `parts` wrk instances as evenly as whole numbers
    go (the first ones take the remainder); each needs one per thread at least."""
    if parts < 1:
        raise ValueError(f"{parts} wrk instances")
    shares = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    if min(shares) < threads:
        raise ValueError(
            f"{total} connections over {parts} wrk instances leave {min(shares)} for one "
            f"of them, fewer than its {threads} thread(s)"
        )
    return shares


def percentile_us(histogram: Mapping[int, int], p: float) -> int:
    """The p-th percentile of a latency histogram, by wrk's own rule (stats_percentile:
    the smallest value whose cumulative count reaches round(p/100 * count + 0.5)), so a
    merged figure reads like one wrk's."""
    count = sum(histogram.values())
    if count == 0:
        return 0
    rank = math.floor(p / 100 * count + 0.5 + 0.5)  # C round() of a positive number
    total = 0
    for value in sorted(histogram):
        total += histogram[value]
        if total >= rank:
            return value
    return max(histogram)


def latency_from_histogram(histogram: Mapping[int, int]) -> dict[str, float]:
    """The latency figures wrk reports (ms), computed from its histogram (µs buckets)."""
    count = sum(histogram.values())
    if count == 0:
        return {}
    mean_us = sum(value * n for value, n in histogram.items()) / count
    variance = sum(n * (value - mean_us) ** 2 for value, n in histogram.items()) / max(count - 1, 1)
    figures_us = {
        "min": float(min(histogram)),
        "max": float(max(histogram)),
        "mean": mean_us,
        "stdev": math.sqrt(variance),
        **{name: float(percentile_us(histogram, p)) for name, p in PERCENTILES.items()},
    }
    return {name: value / 1000 for name, value in figures_us.items()}


def merge_results(results: Sequence[WrkResult]) -> WrkResult:
    """One result for wrk instances that ran side by side for the same -d (timed mode):
    answers, statuses, socket errors and wrk's CPU added up; `seconds` such that `rate`
    is the sum of their rates. Latency from their histograms added bucket by bucket when
    every instance kept one (WrkPlan.histogram), else each figure the worst instance's
    (mean weighted by answers). `raw["latency_from"]` says which."""
    if not results:
        raise ValueError("nothing to merge")
    answered = sum(r.answered for r in results)
    rate = sum(r.rate for r in results)
    statuses: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    socket_errors: Counter[str] = Counter()
    for result in results:
        statuses.update(result.statuses)
        reasons.update(result.reasons)
        socket_errors.update(result.socket_errors)
    histograms = [r.histogram_us for r in results]
    combined: dict[int, int] | None = None
    if all(h is not None for h in histograms):
        combined = Counter()
        for histogram in histograms:
            combined.update(histogram or {})
        latency = latency_from_histogram(combined)
        latency_from = FROM_HISTOGRAMS
    else:
        latency = _worst_latency(results)
        latency_from = FROM_WORST
    return WrkResult(
        seconds=answered / rate if rate > 0 else max(r.seconds for r in results),
        answered=answered,
        sent=sum(r.sent for r in results),
        statuses=statuses,
        reasons=reasons,
        latency_ms=latency,
        socket_errors={k: socket_errors.get(k, 0) for k in ("connect", "read", "write", "timeout")},
        wrk_cpu_s=sum(r.wrk_cpu_s for r in results),
        last_sent_s=None,
        raw={"latency_from": latency_from, "instances": len(results)},
        histogram_us=None if combined is None else dict(combined),
    )


def _worst_latency(results: Sequence[WrkResult]) -> dict[str, float]:
    names = {name for r in results for name in r.latency_ms}
    worst = {
        name: max(r.latency_ms[name] for r in results if name in r.latency_ms) for name in names
    }
    if "min" in worst:
        worst["min"] = min(r.latency_ms["min"] for r in results if "min" in r.latency_ms)
    answered = sum(r.answered for r in results if "mean" in r.latency_ms)
    if answered:
        worst["mean"] = (
            sum(r.latency_ms["mean"] * r.answered for r in results if "mean" in r.latency_ms)
            / answered
        )
    return worst
