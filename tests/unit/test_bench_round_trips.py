"""bench.round_trips' pure parts: the broker's threads grouped by name, the table."""

from __future__ import annotations

import os

from bench.round_trips import Cost, measure, render, thread_group


def test_broker_threads_are_grouped_by_their_truncated_names() -> None:
    # /proc/<pid>/task/*/comm holds the first 15 characters of a JVM thread's name.
    assert thread_group("data-plane-kafk") == "request path"
    assert thread_group("C2 CompilerThre") == "jit"
    assert thread_group("GC Thread#0") == "gc"
    assert thread_group("G1 Conc#0") == "gc"
    assert thread_group("ExpirationReape") == "delayed ops"
    assert thread_group("executor-Fetch") == "delayed ops"
    assert thread_group("kafka-1-raft-io") == "other"


def test_the_table_holds_medians_and_the_broker_only_where_it_was_read() -> None:
    costs = {
        "redis-py PING": [Cost(60, 30, 120, {}), Cost(70, 40, 140, {}), Cost(80, 50, 900, {})],
        "kafka produce, 1 event": [
            Cost(150, 40, 400, {"request path": 150, "jit": 50}),
            Cost(170, 45, 420, {"request path": 170, "jit": 0}),
        ],
    }
    lines = render(costs).splitlines()
    assert lines[1].split()[2:6] == ["70", "40", "140", "-"]
    produce = lines[2]
    assert produce.split()[4:8] == ["160", "42", "410", "185"]
    assert "jit 25, request path 160" in produce


async def test_measure_counts_what_done_counted_and_takes_the_idle_share_off() -> None:
    sent = 0

    async def step() -> None:
        nonlocal sent
        sent += 3  # a step may send several requests, or none

    cost = await measure(step, 10, os.getpid(), done=lambda: sent, broker_idle={"other": 1000.0})
    assert sent == 12, "stops at the first step that reached the count"
    # This process stands in for the broker: an idle rate of 1000 cores leaves nothing.
    assert cost.broker_us and set(cost.broker_us.values()) == {0.0}
