"""What bench/http_load.py records and prints.

`record()` turns the scenario results of all runs into one JSON-able dict (the line
appended to bench/results/history.jsonl); `render()` prints the tables from that dict
alone, so any line of the history can be printed again:

    python -m bench.load_report [bench/results/history.jsonl] [--line -1]

`make bench-scale` (bench/scale_out.py) appends its lines to the same history, marked
`"bench": "scale_out"`; those are printed by its own `render`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.procstat import CLK_TCK, STACK
from deploy.local.stack import ROOT

if TYPE_CHECKING:
    from bench.order_load import ScenarioResult

SCHEMA = 1


# ---------------------------------------------------------------------------- facts


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _first_line_with(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _wrk_version() -> str:
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return " ".join((wrk.stdout or wrk.stderr).split()[:2])  # "wrk debian/4.1.0-3+b2"


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _first_line_with("/proc/cpuinfo", "model name"),
        "mem_total": _first_line_with("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _wrk_version(),
        "clk_tck": CLK_TCK,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def provenance(args: Mapping[str, Any]) -> dict[str, Any]:
    """What every history line opens with: when, which code, which machine, which options."""
    return {
        "schema": SCHEMA,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
    }


# ---------------------------------------------------------------------------- record


def scenario_dict(result: ScenarioResult) -> dict[str, Any]:
    wrk = result.wrk
    cpu = result.cpu_us_per_answer()
    return {
        "connections": result.connections,
        "req_per_s": wrk.rate,
        "seconds": wrk.seconds,
        "answered": wrk.answered,
        "sent": wrk.sent,
        "statuses": {str(k): v for k, v in sorted(wrk.statuses.items())},
        "reasons": dict(sorted(wrk.reasons.items())),
        "latency_ms": wrk.latency_ms,
        "socket_errors": wrk.socket_errors,
        "errors_5xx": wrk.errors_5xx,
        "cpu_us_per_answer": cpu,
        "cpu_us_per_answer_total": sum(cpu.values()),
        "cpu_net_s": result.cpu_s,
        "cpu_raw_s": result.cpu_raw_s,
        "wrk_cpu_s": wrk.wrk_cpu_s,
        "wrk_cpu_us_per_answer": result.wrk_us_per_answer(),
        "cpu_window_s": result.window_s,
        "settled": result.settled,
        "settle_s": result.settle_s,
        "last_sent_s": wrk.last_sent_s,
        "profiled": result.profiled,
        **result.extra,
    }


def _median(values: Iterable[float]) -> float | None:
    present = list(values)
    return statistics.median(present) if present else None


def ratios_to_l0(run: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """req/s of every scenario of one run over L0's req/s in the same run."""
    if "l0" not in run or not run["l0"]["req_per_s"]:
        return {}
    base = float(run["l0"]["req_per_s"])
    return {name: float(s["req_per_s"]) / base for name, s in run.items() if name != "l0"}


def cpu_ratios_to_l0(run: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """CPU µs per answer of every scenario of one run (all processes) over what L0's empty
    handler spent per request in the same run: how many empty requests' worth of CPU an
    answer costs. The machine's speed moves both alike (this one's moves ±30% within an
    hour), so this compares across runs and days where the µs do not."""
    if "l0" not in run or not run["l0"]["cpu_us_per_answer_total"]:
        return {}
    base = float(run["l0"]["cpu_us_per_answer_total"])
    return {
        name: float(s["cpu_us_per_answer_total"]) / base for name, s in run.items() if name != "l0"
    }


def medians(runs: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    names = list(dict.fromkeys(name for run in runs for name in run))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [run[name] for run in runs if name in run]
        processes = list(dict.fromkeys(p for r in rows for p in r["cpu_us_per_answer"]))
        out[name] = {
            "runs": len(rows),
            "req_per_s": _median(r["req_per_s"] for r in rows),
            "p50_ms": _median(r["latency_ms"]["p50"] for r in rows),
            "p99_ms": _median(r["latency_ms"]["p99"] for r in rows),
            "cpu_us_per_answer_total": _median(r["cpu_us_per_answer_total"] for r in rows),
            "cpu_us_per_answer": {
                p: _median(r["cpu_us_per_answer"][p] for r in rows if p in r["cpu_us_per_answer"])
                for p in processes
            },
            "wrk_cpu_us_per_answer": _median(r["wrk_cpu_us_per_answer"] for r in rows),
            "ratio_to_l0": _median(
                ratios_to_l0(run)[name] for run in runs if name in ratios_to_l0(run)
            ),
            "cpu_ratio_to_l0": _median(
                cpu_ratios_to_l0(run)[name] for run in runs if name in cpu_ratios_to_l0(run)
            ),
            "segments_per_answer": segments_per_answer(rows),
        }
    return out


def segments_per_answer(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Median over runs of the data segments each service sent to each counted port
    (`segments_sent`, from ss) per answered request."""
    counted = [r for r in rows if r.get("segments_sent") and r["answered"]]
    pairs = dict.fromkeys(
        (process, target)
        for r in counted
        for process, targets in r["segments_sent"].items()
        for target in targets
    )
    out: dict[str, dict[str, float]] = {}
    for process, target in pairs:
        value = _median(
            r["segments_sent"][process][target] / r["answered"]
            for r in counted
            if target in r["segments_sent"].get(process, {})
        )
        if value is not None:
            out.setdefault(process, {})[target] = value
    return out


def segments_table(meds: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Scenario rows, a column per (service, port) of segments sent per answer."""
    columns = list(
        dict.fromkeys(
            (process, target)
            for med in meds.values()
            for process, targets in med.get("segments_per_answer", {}).items()
            for target in targets
        )
    )
    if not columns:
        return None
    rows = []
    for name, med in meds.items():
        per = med.get("segments_per_answer", {})
        if not per:
            continue  # l0: no service took part
        rows.append(
            [
                name,
                *(fmt(per.get(p, {}).get(t), 2) if t in per.get(p, {}) else "" for p, t in columns),
            ]
        )
    return table(["scenario", *(f"{p} > {t}" for p, t in columns)], rows)


def record(
    *,
    args: Mapping[str, Any],
    runs: Sequence[Sequence[ScenarioResult]],
    idle: Mapping[str, float],
    rss_idle: Mapping[str, int],
    rss_after: Mapping[str, int],
) -> dict[str, Any]:
    by_name = [{r.name: scenario_dict(r) for r in run} for run in runs]
    return {
        **provenance(args),
        "idle_cpu_cores": dict(idle),
        "rss_kib": {"idle": dict(rss_idle), "after": dict(rss_after)},
        "runs": by_name,
        "ratios_to_l0": [ratios_to_l0(run) for run in by_name],
        "cpu_ratios_to_l0": [cpu_ratios_to_l0(run) for run in by_name],
        "medians": medians(by_name),
    }


def append(path: Path, entry: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(orjson.dumps(entry) + b"\n")


# ---------------------------------------------------------------------------- render


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def answers(statuses: Mapping[str, int], reasons: Mapping[str, int]) -> str:
    parts = []
    for status, count in statuses.items():
        if status == "409" and reasons:
            parts += [f"409 {reason}: {n}" for reason, n in reasons.items()]
        else:
            parts.append(f"{status}: {count}")
    return ", ".join(parts) or "none"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def cpu_table(meds: Mapping[str, Mapping[str, Any]], processes: Sequence[str]) -> str:
    """Scenario rows, a column of CPU µs per answer for each of `processes`, their sum and
    wrk's own (`make bench` and `make bench-scale`)."""
    rows = []
    for name, med in meds.items():
        per = med["cpu_us_per_answer"]
        rows.append(
            [
                name,
                *(fmt(per.get(p)) if p in per else "" for p in processes),
                fmt(med["cpu_us_per_answer_total"]),
                fmt(med["wrk_cpu_us_per_answer"]),
            ]
        )
    return table(["scenario", *processes, "sum", "wrk (not in sum)"], rows)


def render(entry: Mapping[str, Any]) -> str:
    runs: list[dict[str, Any]] = entry["runs"]
    meds: dict[str, dict[str, Any]] = entry["medians"]
    args = entry["args"]
    m = entry["machine"]
    last = runs[-1]
    out = [
        f"make bench — {entry['date']}  commit {entry['git_commit'][:10]}"
        f"{' (dirty)' if entry['git_dirty'] else ''}  nproc {m['nproc']}  {m['wrk']}",
        f"{len(runs)} run(s), {args['duration']} s per timed scenario, wrk {args['threads']} "
        f"threads; figures are medians over runs, ratios to L0 taken within each run",
        "",
    ]
    rows = []
    for name, med in meds.items():
        s = last[name]
        rows.append(
            [
                name,
                str(s["connections"]),
                fmt(med["req_per_s"]),
                "1.00x" if name == "l0" else f"{fmt(med['ratio_to_l0'], 3)}x",
                fmt(med["p50_ms"], 1),
                fmt(med["p99_ms"], 1),
                str(sum(s["socket_errors"].values())),
                fmt(med["cpu_us_per_answer_total"]),
                "1.0x" if name == "l0" else f"{fmt(med.get('cpu_ratio_to_l0'), 1)}x",
                fmt(med["wrk_cpu_us_per_answer"]),
            ]
        )
    out.append(
        table(
            [
                "scenario",
                "conns",
                "req/s",
                "vs L0",
                "p50 ms",
                "p99 ms",
                "sock err (last)",
                "CPU µs/answer",
                "CPU x L0",
                "wrk µs/answer",
            ],
            rows,
        )
    )
    out.append("")
    out.append("answers by status (last run):")
    for name, s in last.items():
        out.append(f"  {name:<12} {answers(s['statuses'], s['reasons'])}{unexpected(name, s)}")
        if "fast_path_rejections" in s:
            out.append(
                f"  {'':<12} live_orders' fast-path counter moved by {s['fast_path_rejections']:,}"
                f" ({s['sent']:,} sent; wrk stops counting at -d, with requests in flight)"
            )
    out.append("")
    processes = [p for p in (*STACK, "empty_handler") if any(p in d for d in _cpu_maps(meds))]
    out.append(
        "CPU µs per answered request, per process (median over runs; l0 is the empty "
        "handler's process):"
    )
    out.append(cpu_table(meds, processes))
    idle = entry["idle_cpu_cores"]
    settle = ", ".join(
        f"{name} {s['settle_s']:.1f}s{'' if s['settled'] else ' (NOT settled)'}"
        for name, s in last.items()
    )
    out.append(
        f"  attribution: utime+stime from /proc/<pid>/stat (process and descendants) read "
        f"before the load and again once the stack's CPU rate over 1 s fell back to its idle "
        f"rate + {args['settle_margin']} core (the consumers caught up; polled every 0.25 s, "
        f"deadline {args['settle_timeout']:g} s); idle CPU (the quietest 1 s "
        f"of {args['idle_seconds']:g} s, the lower of a reading before and one after the runs) "
        f"({', '.join(f'{k} {v * 100:.1f}%' for k, v in idle.items())} of a core) is "
        f"subtracted for the window. Waited after the load (last run): {settle}."
    )
    segments = segments_table(meds)
    if segments is not None:
        out.append("")
        out.append(
            "Data segments sent per answer, per service and server (median over runs; from "
            "`ss`, the kernel's TCP counters): each Kafka request or Redis pipeline flush is "
            "one or more, so these bound the round trips an answer cost from above:"
        )
        out.append(segments)
    out.append("")
    rss = entry["rss_kib"]
    out.append(
        table(
            ["RSS MiB", *rss["idle"]],
            [
                ["idle", *(f"{v / 1024:.1f}" for v in rss["idle"].values())],
                ["after load", *(f"{rss['after'].get(k, 0) / 1024:.1f}" for k in rss["idle"])],
            ],
        )
    )
    for index, run in enumerate(runs, 1):
        if "burst" in run:
            out.append("")
            out.append(_burst(index, run["burst"]))
    if len(runs) > 1:
        out.append("")
        out.append("per-run req/s ratio to L0 (same run):")
        for index, ratios in enumerate(entry["ratios_to_l0"], 1):
            out.append(f"  run {index}: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()))
        out.append("per-run CPU per answer over L0's CPU per request (same run):")
        for index, ratios in enumerate(entry.get("cpu_ratios_to_l0", []), 1):
            out.append(f"  run {index}: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    profiled = [s for run in runs for s in run.values() if s.get("profiled")]
    if profiled:
        out.append("")
        out.append(
            "profile (py-spy's flame graph, or perf's report for redis; its scenario's figures "
            f"include the profiler's cost): {profiled[0]['profiled']}"
        )
        if profiled[0].get("pinned"):
            out.append(f"  pinned while sampled: {profiled[0]['pinned']}")
    return "\n".join(out)


def unexpected(name: str, s: Mapping[str, Any]) -> str:
    """A warning when a timed scenario got other answers than it is built to get."""
    statuses = s["statuses"]
    if name.startswith(("l0", "decided")) and set(statuses) - {"201"}:
        return "  <- expected only 201"
    if name.startswith("sold_out") and (
        set(statuses) - {"409"} or set(s["reasons"]) - {"sold_out"}
    ):
        return "  <- expected only 409 sold_out"
    return ""


def progress_line(result: ScenarioResult) -> str:
    wrk = result.wrk
    cpu = sum(result.cpu_us_per_answer().values())
    return (
        f"  {result.name:<12} {wrk.rate:>9,.0f} req/s  p50 {wrk.latency_ms.get('p50', 0):.1f} ms"
        f"  p99 {wrk.latency_ms.get('p99', 0):.1f} ms  {wrk.answered:,} answers"
        f"  {cpu:,.0f} CPU µs/answer  (caught up {result.settle_s:.1f} s after the load"
        f"{'' if result.settled else ', NOT settled'})"
    )


def _cpu_maps(meds: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [med["cpu_us_per_answer"] for med in meds.values()]


def _burst(index: int, s: Mapping[str, Any]) -> str:
    inv = s["inventory"]
    checks = s["checks"]
    failed = [name for name, ok in checks.items() if not ok]
    last_sent = s.get("last_sent_s")
    return "\n".join(
        [
            f"launch burst (run {index}): {s['attempts']:,} attempts by {s['buyers']:,} buyers "
            f"on {s['units']:,} units, offered within {s['window_s']:g} s over "
            f"{s['connections']} connections",
            f"  sent {s['sent']:,}, answered {s['answered']:,}; last sent after "
            f"{fmt(last_sent, 2)} s, last answer after {s['seconds']:.2f} s "
            f"({s['req_per_s']:,.0f} answers/s)",
            f"  answers: {answers(s['statuses'], s['reasons'])}; 5xx: {s['errors_5xx']}; "
            f"socket errors: {s['socket_errors']}",
            f"  inventory {s['sku']}: received {inv['received']}, available {inv['available']}, "
            f"reserved {inv['reserved']}, sold {inv['sold']}",
            f"  checks: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)} "
            f"({', '.join(checks)})",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "history", nargs="?", type=Path, default=Path(__file__).parent / "results/history.jsonl"
    )
    parser.add_argument("--line", type=int, default=-1, help="which entry (Python index)")
    args = parser.parse_args(argv)
    lines = [line for line in args.history.read_bytes().splitlines() if line.strip()]
    entry = orjson.loads(lines[args.line])
    if entry.get("bench") == "scale_out":
        from bench.scale_out import render as render_scale_out  # noqa: PLC0415 (it imports us)

        print(render_scale_out(entry))
    else:
        print(render(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
