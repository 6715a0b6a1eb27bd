"""`make bench-scale` (bench/scale_out.py) without the stack: splitting connections over
wrk instances, merging their results (latency from combined histograms, by wrk's own
percentile rule), placing SKUs on different group members, the report's arithmetic."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from bench import load_report, scale_out
from bench.kafka_groups import key_owners, partition_of, spread_keys
from bench.order_load import ScenarioResult
from bench.procstat import CpuUse
from bench.wrk_runner import (
    FROM_HISTOGRAMS,
    FROM_WORST,
    WrkResult,
    latency_from_histogram,
    merge_results,
    percentile_us,
    run_wrk,
    split_connections,
    write_tokens,
)
from deploy.local import stack
from tests.unit.test_bench_http_load import Recorder, plan, serve

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


# ---------------------------------------------------------------------------- connections


def test_connections_are_split_evenly_and_the_remainder_goes_first() -> None:
    assert split_connections(64, 2, threads=1) == [32, 32]
    assert split_connections(65, 2, threads=1) == [33, 32]
    assert split_connections(7, 3, threads=2) == [3, 2, 2]


def test_a_split_that_leaves_an_instance_fewer_connections_than_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="leave 1 for one of them, fewer than its 2 thread"):
        split_connections(3, 2, threads=2)


def test_wrk_instance_i_sends_to_live_orders_process_i() -> None:
    assert scale_out.lane_urls(["a"], 2) == ["a", "a"]
    assert scale_out.lane_urls(["a", "b"], 2) == ["a", "b"]


# ---------------------------------------------------------------------------- latency


def test_percentiles_follow_wrks_rank_rule() -> None:
    # wrk: rank = round(p/100 * count + 0.5), the first value whose cumulative count
    # reaches it. 1..100 once each: p50 is 51, p99 is 100.
    histogram = {us: 1 for us in range(1, 101)}
    assert percentile_us(histogram, 50) == 51
    assert percentile_us(histogram, 99) == 100
    assert percentile_us({7: 3}, 99.9) == 7
    assert percentile_us({}, 99) == 0
    figures = latency_from_histogram({1000: 1, 3000: 1})
    assert figures["mean"] == 2.0
    assert (figures["min"], figures["max"]) == (1.0, 3.0)


def result(
    answered: int,
    histogram: dict[int, int] | None,
    *,
    seconds: float = 10.0,
    p99_ms: float = 1.0,
    status: int = 201,
) -> WrkResult:
    return WrkResult(
        seconds=seconds,
        answered=answered,
        sent=answered + 3,
        statuses=Counter({status: answered}),
        reasons=Counter({"sold_out": answered}) if status == 409 else Counter(),
        latency_ms={"p50": p99_ms / 2, "p99": p99_ms, "mean": p99_ms / 2, "max": p99_ms},
        socket_errors={"connect": 0, "read": 1, "write": 0, "timeout": 0},
        wrk_cpu_s=0.25,
        last_sent_s=None,
        raw={},
        histogram_us=histogram,
    )


def test_merged_results_add_up_and_take_latency_from_the_combined_histogram() -> None:
    fast = result(900, {10_000: 900}, seconds=10.0)
    slow = result(100, {100_000: 100}, seconds=9.5)
    merged = merge_results([fast, slow])
    assert merged.answered == 1000
    assert merged.sent == 1006
    assert merged.rate == pytest.approx(90 + 100 / 9.5)  # the sum of the instances' rates
    assert merged.statuses == Counter({201: 1000})
    assert merged.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 0}
    assert merged.wrk_cpu_s == 0.5
    # 90% of the answers took 10 ms, 10% 100 ms: p50 10 ms, p99 100 ms; not either's alone.
    assert merged.latency_ms["p50"] == 10.0
    assert merged.latency_ms["p99"] == 100.0
    assert merged.latency_ms["mean"] == pytest.approx(19.0)
    assert merged.raw["latency_from"] == FROM_HISTOGRAMS
    assert merged.histogram_us == {10_000: 900, 100_000: 100}


def test_without_every_histogram_each_latency_figure_is_the_worse_instances() -> None:
    merged = merge_results([result(900, {10_000: 900}, p99_ms=12.0), result(100, None)])
    assert merged.raw["latency_from"] == FROM_WORST
    assert merged.latency_ms["p99"] == 12.0
    assert merged.latency_ms["mean"] == pytest.approx((900 * 6.0 + 100 * 0.5) / 1000)
    assert merged.histogram_us is None


@needs_wrk
async def test_wrks_histogram_gives_back_wrks_own_percentiles(tmp_path: Path) -> None:
    recorder = Recorder(409, b'{"status": "rejected", "reason": "sold_out"}')
    tokens = tmp_path / "tokens.txt"
    write_tokens(tokens, ["a", "b"])
    async with serve(recorder) as url:
        got = await asyncio.to_thread(
            run_wrk, plan(url, tokens, duration_s=1, histogram=True), tmp_path, "h"
        )
    assert got.histogram_us
    # The histogram wrk took its percentiles from (with its coordinated-omission
    # correction): read back, the same figures come out.
    assert sum(got.histogram_us.values()) >= got.answered > 0
    for name in ("p50", "p90", "p99", "min", "max"):
        assert latency_from_histogram(got.histogram_us)[name] == got.latency_ms[name], name
    alone = merge_results([got])
    assert alone.latency_ms["p99"] == got.latency_ms["p99"]
    assert alone.answered == got.answered
    assert "histogram_cpu_s" in got.raw  # reading it out is not counted as wrk's load CPU


# ---------------------------------------------------------------------------- placing SKUs


def round_robin(members: list[str], topics: dict[str, int]) -> dict[tuple[str, int], str]:
    """What aiokafka's RoundRobinPartitionAssignor does for members of one subscription."""
    partitions = sorted((t, p) for t, n in topics.items() for p in range(n))
    return {tp: members[i % len(members)] for i, tp in enumerate(partitions)}


KEY_TOPICS = ("lc.orders", "lc.inventory")
COUNTS = {"lc.orders": 12, "lc.inventory": 12, "lc.picks": 12}


def owners(members: int) -> dict[str, dict[tuple[str, int], str]]:
    return {
        group: round_robin([f"{service}-{i}" for i in range(1, members + 1)], topics)
        for group, service, topics in (
            ("lc.live_orders", "live_orders", {"lc.inventory": 12}),
            ("lc.inventory", "inventory", {"lc.orders": 12, "lc.picks": 12}),
            ("lc.notifier", "notifier", {"lc.orders": 12, "lc.inventory": 12}),
        )
    }


def test_keys_are_partitioned_as_the_services_producer_does() -> None:
    for key in ("crab", "rice-2", "scale-0a1b2c3d-7"):
        expected = DefaultPartitioner()(key.encode(), list(range(12)), list(range(12)))
        assert partition_of(key, 12) == expected


def test_with_two_members_each_group_gets_the_two_skus_on_different_members() -> None:
    two = owners(2)
    skus = spread_keys("scale-x", 2, owners=two, partition_counts=COUNTS, topics=KEY_TOPICS)
    first, second = (key_owners(s, two, COUNTS, KEY_TOPICS) for s in skus)
    for group in two:
        assert len(first[group]) == 1
        assert not first[group] & second[group], group
    assert skus == spread_keys(
        "scale-x", 2, owners=two, partition_counts=COUNTS, topics=KEY_TOPICS
    )  # deterministic for a stem


def test_with_one_member_any_keys_do() -> None:
    skus = spread_keys("s", 2, owners=owners(1), partition_counts=COUNTS, topics=KEY_TOPICS)
    assert skus == ["s-0", "s-1"]


def test_one_partition_cannot_spread_and_the_report_says_so() -> None:
    counts = {"lc.orders": 1, "lc.inventory": 1}
    one_partition = {
        "lc.inventory": {("lc.orders", 0): "inventory-1"},  # inventory-2 got nothing
        "lc.live_orders": {("lc.inventory", 0): "live_orders-2"},
    }
    skus = spread_keys("s", 2, owners=one_partition, partition_counts=counts, topics=KEY_TOPICS)
    assert len(skus) == 2
    lanes = [
        scale_out.Lane(
            url="u",
            sku=sku,
            session_id="s",
            connections=32,
            tokens=Path("t"),
            members={
                g: sorted(m) for g, m in key_owners(sku, one_partition, counts, KEY_TOPICS).items()
            },
        )
        for sku in skus
    ]
    assert not scale_out.spread_across_members(lanes, processes=2)
    assert scale_out.spread_across_members(lanes, processes=1)


# ---------------------------------------------------------------------------- runs, report


def test_the_layouts_alternate_so_the_second_set_starts_or_stops_once_per_run() -> None:
    assert [scale_out.layout_order(run) for run in (1, 2, 3)] == [(1, 2), (2, 1), (1, 2)]


def test_a_result_knows_the_layout_it_was_measured_with() -> None:
    """run_all recomputes each result with its own layout's quietest idle reading."""
    assert scale_out.layout_of(scenario("decided_2p", 1000, 2)) == 2
    assert scale_out.layout_of(scenario("sold_out_1p", 1000, 1)) == 1
    assert scale_out.scenario_name("sold_out", 2) == "sold_out_2p"


def scenario(name: str, rate: float, processes: int) -> ScenarioResult:
    answered = int(rate * 10)
    wrk = merge_results(
        [
            result(answered // 2, {20_000: answered // 2}),
            result(answered - answered // 2, {40_000: answered - answered // 2}),
        ]
    )
    pids = scale_out.process_names(processes)
    cpu = CpuUse(
        net_s=dict.fromkeys(pids, 0.5),
        raw_s=dict.fromkeys(pids, 0.6),
        window_s=11.0,
        settled=True,
        settle_s=1.0,
        load_raw_s=dict.fromkeys(pids, 0.25),
        load_s=10.0,
    )
    lanes = [
        {
            "live_orders": f"http://127.0.0.1:{8081 + i % processes}",
            "sku": f"scale-{i}",
            "connections": 32,
            "members": {"lc.inventory": [f"inventory-{i % processes}"]},
            "req_per_s": rate / 2,
            "answered": answered // 2,
            "p99_ms": 40.0,
        }
        for i in range(2)
    ]
    extra = {
        "processes": processes,
        "latency_from": wrk.raw["latency_from"],
        "busy_cores": cpu.busy_cores(),
        "load_s": cpu.load_s,
        "spread": True,
        "lanes": lanes,
    }
    return ScenarioResult.of(name, 64, wrk, cpu, extra=extra)


def entry(partitions: int = 12) -> dict[str, Any]:
    runs = [
        [
            scenario("decided_1p", 1000, 1),
            scenario("sold_out_1p", 4000, 1),
            scenario("decided_2p", 1100, 2),
            scenario("sold_out_2p", 4400, 2),
        ],
        [
            scenario("decided_2p", 600, 2),
            scenario("sold_out_2p", 4000, 2),
            scenario("decided_1p", 500, 1),
            scenario("sold_out_1p", 5000, 1),
        ],
    ]
    return scale_out.record(
        args={"duration": 10, "connections": 64, "threads": 1, "settle_margin": 0.1}
        | {"idle_seconds": 5.0, "env_file": Path(".run/stack.env")},
        runs=runs,
        idle_by_layout={1: {"kafka": 0.05}, 2: {"kafka": 0.06, "live_orders-2": 0.01}},
        partition_counts={"lc.orders": partitions, "lc.inventory": partitions},
    )


def test_ratios_are_taken_within_each_run_and_their_median_reported() -> None:
    recorded = entry()
    assert recorded["bench"] == "scale_out"
    assert recorded["ratios"] == [
        {"decided": pytest.approx(1.1), "sold_out": pytest.approx(1.1)},
        {"decided": pytest.approx(1.2), "sold_out": pytest.approx(0.8)},
    ]
    assert recorded["median_ratios"]["decided"] == pytest.approx(1.15)
    assert recorded["medians"]["decided_2p"]["req_per_s"] == pytest.approx(850)
    # CPU per answer of every process of the layout, both copies of each service.
    assert set(recorded["medians"]["decided_2p"]["cpu_us_per_answer"]) == set(
        scale_out.process_names(2)
    )
    assert recorded["idle_cpu_cores"]["2"]["live_orders-2"] == 0.01
    orjson.dumps(recorded)  # a JSON line


def test_the_report_shows_both_layouts_the_ratios_and_how_latency_was_merged() -> None:
    text = scale_out.render(entry())
    for expected in (
        "decided_1p",
        "sold_out_2p",
        "2 processes / 1 process",
        "run 2: decided 1.200x, sold_out 0.800x",
        "combined latency histograms",
        "live_orders-2",
        "cannot add CPU that is not there",
    ):
        assert expected in text, expected
    assert "NOTE" not in text
    assert "fewer than 2 partitions" in scale_out.render(entry(partitions=1))


def test_load_report_prints_a_scale_out_line_with_its_own_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = tmp_path / "history.jsonl"
    load_report.append(history, entry())
    assert load_report.main([str(history)]) == 0
    assert "make bench-scale" in capsys.readouterr().out


def test_make_down_also_stops_processes_the_bench_left_pid_files_for(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    for name in ("kafka", "redis", "live_orders", "live_orders-2", "notifier-2"):
        (tmp_path / "pids" / f"{name}.pid").write_text("999999999\n")
    assert stack.extra_processes(tmp_path) == ["live_orders-2", "notifier-2"]
