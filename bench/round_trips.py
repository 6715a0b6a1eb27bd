"""What one round trip costs on this machine (`make bench-rtt`).

Every order crosses process boundaries a dozen times (HTTP in and out, Redis, two Kafka
hops each with a produce and a fetch). When orders come one at a time, each crossing is a
round trip of its own, and what it costs in CPU (not only in time) sets the floor of the
per-order figures of `make bench` at low concurrency. Measured here, one at a time,
against the running stack (`make up`):

  redis socket   a PING over a blocking TCP socket: the kernel's share alone
  redis-py       a PING through redis-py's asyncio client (uvloop, as the services)
  pipeline       a PING through TickPipeline (the services' own pipelined connection)
  kafka produce  one 450-byte event produced and acknowledged (acks=all, idempotent, the
                 services' producer settings), on a throw-away topic; also the broker's
                 CPU per round trip, by thread group (/proc/<pid>/task/*)
  kafka batch    the same with N events per request (send_batch): what is per request and
                 what is per event
  kafka fetch    an empty fetch of N partitions (a consumer polling a quiet topic), with the
                 broker holding it up to 2 ms (a consumer in batch mode) or answering at
                 once: what a consumer's poll costs either side, whatever it returns

Client CPU is this process's user and system time (getrusage) per round trip; the
broker's is utime+stime of its threads. Rounds interleave the probes; figures are medians
over rounds, after --warmup-seconds of untimed round trips. Prints figures; never fails
on a timing.

    python -m bench.round_trips --env-file .run/stack.env [--rounds 3 --count 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import resource
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procstat import CLK_TCK, read_pid
from deploy.local.stack import read_env_file
from services.common.kafka_producer import create_producer
from services.common.redis_batch import TickPipeline
from services.common.redis_scripts import create_redis
from services.common.settings import Settings

EVENT = b"x" * 450
BATCH_SIZES = (10, 100)
# (partitions, the broker's fetch wait in ms) of the empty-fetch probes: the services'
# consumers hold 12 (live_orders), 24 (inventory) and 48 (notifier) partitions.
FETCHES = ((1, 2), (12, 2), (24, 2), (12, 0))


@dataclass(frozen=True)
class Cost:
    """Per round trip: this process's user and system CPU, wall time (µs), and the
    broker's CPU by thread group (µs) when it was read."""

    user_us: float
    sys_us: float
    wall_us: float
    broker_us: Mapping[str, float]


def _rusage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def thread_group(comm: str) -> str:
    """A JVM thread's group from its (15-character) name: Kafka's request path, the JIT
    compilers, the garbage collector, the delayed operations, or the rest."""
    if comm.startswith("data-plane"):
        return "request path"
    if comm.startswith(("C1 Compiler", "C2 Compiler", "CN_Compiler")) or "Compiler" in comm:
        return "jit"
    if re.match(r"^(GC Thread|G1 |GN_|GC_)", comm):
        return "gc"
    if comm.startswith(("ExpirationReape", "executor-")):
        # The purgatories: fetches and produces held until their data (or time) comes.
        return "delayed ops"
    return "other"


def broker_ticks(pid: int | None) -> dict[str, int]:
    """Clock ticks of the broker's threads so far, by thread group."""
    ticks: dict[str, int] = collections.Counter()
    if pid is None:
        return ticks
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[thread_group(comm)] += int(fields[11]) + int(fields[12])
    return ticks


async def measure(
    step: Callable[[], Awaitable[object]],
    count: int,
    broker_pid: int | None = None,
    *,
    done: Callable[[], int] | None = None,
    broker_idle: Mapping[str, float] | None = None,
) -> Cost:
    """`count` sequential awaits of `step`, or (`done`) awaits of it until `done()` counted
    `count` round trips; `broker_idle` (cores by thread group) is taken off the broker's."""
    before, started, ticks = _rusage(), time.perf_counter(), broker_ticks(broker_pid)
    if done is None:
        for _ in range(count):
            await step()
    else:
        first = done()
        while done() - first < count:
            await step()
        count = done() - first
    wall = time.perf_counter() - started
    after, ticks_after = _rusage(), broker_ticks(broker_pid)
    idle = broker_idle or {}
    broker = {
        group: max(
            0.0, (ticks_after[group] - ticks.get(group, 0)) / CLK_TCK - idle.get(group, 0.0) * wall
        )
        / count
        * 1e6
        for group in ticks_after
    }
    return Cost(
        (after[0] - before[0]) / count * 1e6,
        (after[1] - before[1]) / count * 1e6,
        wall / count * 1e6,
        broker,
    )


def socket_ping(host: str, port: int, count: int) -> Cost:
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        before, started = _rusage(), time.perf_counter()
        for _ in range(count):
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                raise RuntimeError("redis did not answer PONG")
        wall = time.perf_counter() - started
        after = _rusage()
    return Cost(
        (after[0] - before[0]) / count * 1e6,
        (after[1] - before[1]) / count * 1e6,
        wall / count * 1e6,
        {},
    )


async def run_rounds(args: argparse.Namespace) -> dict[str, list[Cost]]:
    env = read_env_file(args.env_file)
    settings = Settings.from_env("live_orders", env)
    broker_pid = read_pid(args.run_dir, "kafka")
    match = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+):(\d+)", settings.redis_url)
    redis = create_redis(settings.redis_url)
    pipeline = TickPipeline(redis)
    producer = create_producer(settings)
    topic = f"{settings.topic_prefix}bench.rtt.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    costs: dict[str, list[Cost]] = collections.defaultdict(list)
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await producer.start()
        await producer.send_and_wait(topic, EVENT)  # metadata, producer id

        async def produce_one() -> None:
            await producer.send_and_wait(topic, EVENT)

        def produce_batch(size: int) -> Callable[[], Awaitable[object]]:
            async def step() -> object:
                batch = producer.create_batch()
                for _ in range(size):
                    batch.append(key=None, value=EVENT, timestamp=None)
                return await (await producer.send_batch(batch, topic, partition=0))

            return step

        # Untimed: a fresh broker's JIT compiler spends seconds of CPU during its first
        # minute of load (as `make bench`'s warm-up says), and the first round trips of
        # every client pay for connections and caches.
        deadline = time.monotonic() + args.warmup_seconds
        while time.monotonic() < deadline:
            await produce_one()
            await produce_batch(BATCH_SIZES[-1])()
            await redis.ping()
            await pipeline.command("PING")
        for _ in range(args.rounds):
            if match is not None:
                costs["redis socket PING"].append(
                    socket_ping(match.group(1), int(match.group(2)), args.count)
                )
            costs["redis-py PING"].append(await measure(redis.ping, args.count))
            costs["TickPipeline PING"].append(
                await measure(lambda: pipeline.command("PING"), args.count)
            )
            costs["kafka produce, 1 event"].append(
                await measure(produce_one, args.count // 2, broker_pid)
            )
            for size in BATCH_SIZES:
                costs[f"kafka produce, {size} events"].append(
                    await measure(produce_batch(size), args.count // 4, broker_pid)
                )
            idle = await broker_idle_rate(broker_pid)
            for partitions, wait_ms in FETCHES:
                costs[f"kafka fetch, {partitions} p, wait {wait_ms}"].append(
                    await empty_fetches(
                        settings,
                        admin,
                        partitions=partitions,
                        wait_ms=wait_ms,
                        count=args.count // 4,
                        broker_pid=broker_pid,
                        broker_idle=idle,
                    )
                )
    finally:
        await producer.stop()
        await pipeline.aclose()
        await redis.aclose()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
    return costs


async def broker_idle_rate(pid: int | None, seconds: float = 2.0) -> dict[str, float]:
    """The broker's CPU (cores, by thread group) while this process sends it nothing: its
    own timers, and the polls of the stack's idle consumers."""
    before = broker_ticks(pid)
    await asyncio.sleep(seconds)
    after = broker_ticks(pid)
    return {g: (after[g] - before.get(g, 0)) / CLK_TCK / seconds for g in after}


async def empty_fetches(
    settings: Settings,
    admin: AIOKafkaAdminClient,
    *,
    partitions: int,
    wait_ms: int,
    count: int,
    broker_pid: int | None,
    broker_idle: Mapping[str, float],
) -> Cost:
    """`count` fetches of a consumer holding `partitions` partitions of a topic nobody
    writes to; the broker holds each up to `wait_ms` for data that never comes."""
    topic = f"{settings.topic_prefix}bench.rtt.fetch.{uuid.uuid4().hex[:8]}"
    await admin.create_topics([NewTopic(topic, partitions, 1)])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=wait_ms,
        fetch_min_bytes=1,
    )
    fetches = 0
    try:
        await consumer.start()
        # aiokafka's background fetcher sends them: count its requests (this consumer's
        # client only; a bench probe, not the services' code).
        client = consumer._client
        send = client.send

        def counting(node_id: int, request: object, *a: object, **k: object) -> Awaitable[object]:
            nonlocal fetches
            if type(request).__name__.startswith("FetchRequest"):
                fetches += 1
            return send(node_id, request, *a, **k)  # type: ignore[no-any-return]

        client.send = counting
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        # Untimed: the partitions' leaders and positions are looked up first.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)
        return await measure(
            lambda: consumer.getmany(timeout_ms=100),
            count,
            broker_pid,
            done=lambda: fetches,
            broker_idle=broker_idle,
        )
    finally:
        await consumer.stop()
        await admin.delete_topics([topic])


def render(costs: Mapping[str, list[Cost]]) -> str:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f}"

    lines = [
        f"{'round trip':<26} {'user µs':>8} {'sys µs':>7} {'wall µs':>8} "
        f"{'broker µs':>10}  broker by thread group (µs)"
    ]
    for name, rounds in costs.items():
        groups = sorted({g for cost in rounds for g in cost.broker_us})
        broker = med([sum(cost.broker_us.values()) for cost in rounds]) if groups else "-"
        by_group = ", ".join(
            f"{g} {med([cost.broker_us.get(g, 0.0) for cost in rounds])}" for g in groups
        )
        lines.append(
            f"{name:<26} {med([c.user_us for c in rounds]):>8} {med([c.sys_us for c in rounds]):>7} "
            f"{med([c.wall_us for c in rounds]):>8} {broker:>10}  {by_group}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-file", type=Path, default=Path(".run/stack.env"))
    parser.add_argument("--run-dir", type=Path, default=Path(".run"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000, help="round trips per probe")
    parser.add_argument(
        "--warmup-seconds", type=float, default=20, help="untimed round trips first (JIT, caches)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.count < 4:
        parser.error("--rounds must be at least 1 and --count at least 4")
    # The services' event loop (uvloop), so the Python figures are theirs.
    costs = uvloop.run(run_rounds(args))
    print(f"per round trip, medians over {args.rounds} round(s) of {args.count}:")
    print(render(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
