"""Adaptive fetches: the runner switches aiokafka's fetch parameters with the event rate.
They are aiokafka internals (the version is pinned): the first test fails if an upgrade
moves them, the others drive the switch on a stand-in consumer (no broker)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher

from services.common import kafka_consumer
from services.common.kafka_consumer import (
    BATCH_MIN_BYTES,
    LONG_HOLD_MS,
    SHORT_HOLD_MS,
    ConsumerRunner,
)
from services.common.metrics import PlatformMetrics
from services.common.settings import Settings


def test_aiokafka_still_builds_fetches_from_the_attributes_we_set() -> None:
    source = inspect.getsource(Fetcher)
    for name in ("self._fetch_min_bytes", "self._fetch_max_wait_ms"):
        assert f"{name} = " in source, f"aiokafka's Fetcher no longer sets {name}"
    building = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_min_bytes" in building and "self._fetch_max_wait_ms" in building


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(kafka_consumer.time, "monotonic", clock)
    return clock


def adaptive_runner() -> tuple[ConsumerRunner, Any, PlatformMetrics]:
    settings = Settings(service="inventory", jwt_secret="s" * 32, kafka_fetch_max_wait_ms=50)
    metrics = PlatformMetrics.create()
    runner = ConsumerRunner(
        settings=settings,
        group="lc.inventory",
        topics=["lc.orders"],
        handler=lambda events: None,  # type: ignore[arg-type,return-value]
        publisher=None,  # type: ignore[arg-type]
        metrics=metrics,
        dlq_topic="lc.dlq",
        adaptive_fetch=True,
    )
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=50))
    return runner, consumer, metrics


def feed(runner: ConsumerRunner, consumer: Any, clock: Clock, rate: int, seconds: float) -> None:
    """`rate` events a second, in polls every 10 ms."""
    for _ in range(int(seconds * 100)):
        clock.now += 0.01
        runner._adapt_fetches(consumer, rate // 100)


def held(consumer: Any) -> tuple[int, int]:
    return consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms


def test_fetches_wait_to_fill_during_a_burst_longer_at_a_higher_rate_and_return_at_once_after(
    clock: Clock,
) -> None:
    runner, consumer, metrics = adaptive_runner()

    def gauges() -> tuple[float | None, float | None]:
        labels = {"group": "lc.inventory"}
        return (
            metrics.registry.get_sample_value("lc_consumer_batch_mode", labels),
            metrics.registry.get_sample_value("lc_consumer_fetch_hold_seconds", labels),
        )

    runner._window_started = clock.now
    feed(runner, consumer, clock, rate=300, seconds=2)
    assert held(consumer) == (1, 50)
    feed(runner, consumer, clock, rate=1_200, seconds=1)
    assert held(consumer) == (BATCH_MIN_BYTES, SHORT_HOLD_MS)
    assert gauges() == (1, SHORT_HOLD_MS / 1000)
    feed(runner, consumer, clock, rate=3_000, seconds=1)
    assert held(consumer) == (BATCH_MIN_BYTES, LONG_HOLD_MS)
    assert gauges() == (1, LONG_HOLD_MS / 1000)
    # Between two thresholds it stays as it is (no flapping around one rate).
    feed(runner, consumer, clock, rate=1_700, seconds=2)
    assert held(consumer) == (BATCH_MIN_BYTES, LONG_HOLD_MS)
    feed(runner, consumer, clock, rate=1_200, seconds=1)
    assert held(consumer) == (BATCH_MIN_BYTES, SHORT_HOLD_MS)
    feed(runner, consumer, clock, rate=700, seconds=2)
    assert held(consumer) == (BATCH_MIN_BYTES, SHORT_HOLD_MS)
    feed(runner, consumer, clock, rate=100, seconds=1)
    assert held(consumer) == (1, 50)
    assert gauges() == (0, 0)


def test_a_runner_holds_as_long_as_the_policy_it_is_given_says(clock: Clock) -> None:
    asked: list[tuple[float, int]] = []
    wanted = {"hold_ms": 0}

    def policy(rate: float, hold_ms: int) -> int:
        asked.append((rate, hold_ms))
        return wanted["hold_ms"]

    runner, consumer, _ = adaptive_runner()
    runner._fetch_policy = policy
    runner._window_started = clock.now
    feed(runner, consumer, clock, rate=20_000, seconds=1)
    # Asked once per window, with the window's rate: a high rate alone does not hold.
    assert asked and all(ask == (pytest.approx(20_000, rel=0.05), 0) for ask in asked)
    assert held(consumer) == (1, 50)
    wanted["hold_ms"] = 7
    asked.clear()
    feed(runner, consumer, clock, rate=0, seconds=0.6)
    assert asked[0][1] == 0
    assert held(consumer) == (BATCH_MIN_BYTES, 7)
    feed(runner, consumer, clock, rate=0, seconds=0.6)
    assert asked[-1] == (0, 7)
