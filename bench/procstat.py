"""CPU time and memory of the stack's processes, from /proc (Linux).

CPU is utime+stime of `/proc/<pid>/stat` (all threads of the process: Kafka's JVM threads,
redis-server's I/O threads) plus cutime+cstime (its children that ended), plus the same for
every descendant alive at the reading, in clock ticks (`SC_CLK_TCK`, usually 100 per
second: 10 ms resolution per process). Counting the ended children keeps the sum from
going back when one ends: redis-server forks to rewrite its AOF (a few seconds of CPU once
the bench has stored a million attempts), and without them its idle rate once read -38%
of a core, which no settling wait could ever reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from deploy.local.stack import SERVICES

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every process `make up` starts, named as its pid file under <run dir>/pids/.
STACK = ("kafka", "redis", *SERVICES)

T = TypeVar("T")


class ProcError(RuntimeError):
    """A process of the stack is not running; the message says which."""


def read_pid(run_dir: Path, name: str) -> int | None:
    """The pid in `<run_dir>/pids/<name>.pid` (written by deploy/local/stack.py), if that
    process is alive."""
    try:
        pid = int((run_dir / "pids" / f"{name}.pid").read_text().strip())
        state = _stat_fields(pid)[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


def stack_pids(run_dir: Path, names: tuple[str, ...] = STACK) -> dict[str, int]:
    pids = {name: read_pid(run_dir, name) for name in names}
    missing = [name for name, pid in pids.items() if pid is None]
    if missing:
        raise ProcError(
            f"not running (no live pid in {run_dir / 'pids'}): {', '.join(missing)}; "
            "start the stack with `make up`"
        )
    return {name: pid for name, pid in pids.items() if pid is not None}


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int, children: Mapping[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    # utime, stime, cutime, cstime (fields 14-17): a child that ended is in its parent's
    # cutime/cstime from then on.
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


@dataclass(frozen=True)
class CpuSample:
    at: float  # time.monotonic()
    ticks: dict[str, int]  # name -> utime+stime of the process and its descendants

    def seconds_since(self, earlier: CpuSample) -> dict[str, float]:
        return {
            name: (ticks - earlier.ticks.get(name, ticks)) / CLK_TCK
            for name, ticks in self.ticks.items()
        }


def sample_cpu(pids: Mapping[str, int]) -> CpuSample:
    children = _children()
    ticks: dict[str, int] = {}
    for name, pid in pids.items():
        total = 0
        for member in _tree(pid, children):
            try:
                total += _ticks(member)
            except (OSError, ValueError, IndexError):
                if member == pid:
                    raise ProcError(f"{name} (pid {pid}) exited during the benchmark") from None
        ticks[name] = total
    return CpuSample(time.monotonic(), ticks)


def rss_kib(pid: int) -> int:
    """VmRSS of the process (kB as /proc reports it; 0 for a kernel thread)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def idle_rates(pids: Mapping[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second each process spends with no load on it (Kafka's and the
    services' background loops): the lowest rate of each over the 1 s windows of
    `seconds`. Right after `make up` the broker's JVM is still compiling and the groups
    are settling; an average over that would be subtracted from every scenario and hide
    real work, so the quietest second is taken as the idle rate."""
    windows = max(1, round(seconds))
    lowest: dict[str, float] = {}
    before = sample_cpu(pids)
    for _ in range(windows):
        await asyncio.sleep(seconds / windows)  # a measuring window, not a readiness wait
        after = sample_cpu(pids)
        elapsed = after.at - before.at
        for name, used in after.seconds_since(before).items():
            rate = used / elapsed
            lowest[name] = min(rate, lowest.get(name, rate))
        before = after
    return lowest


@dataclass(frozen=True)
class Settled:
    sample: CpuSample
    waited_s: float
    settled: bool  # False: the deadline passed first


async def wait_until_quiet(
    pids: Mapping[str, int],
    idle: Mapping[str, float],
    *,
    margin_cores: float,
    window_s: float = 1.0,
    deadline_s: float = 60.0,
    poll_s: float = 0.25,
) -> Settled:
    """Poll until the processes' total CPU rate over the last `window_s` is back to their
    idle rate (+ `margin_cores`): by then the consumers have caught up with what the load
    queued (Kafka records, projections, notifications), so a reading taken now counts the
    asynchronous work the requests caused. Returns that reading."""
    started = time.monotonic()
    idle_total = sum(idle.get(name, 0.0) for name in pids)
    history = [sample_cpu(pids)]
    while True:
        await asyncio.sleep(poll_s)  # polling interval
        history.append(sample_cpu(pids))
        latest = history[-1]
        while len(history) > 2 and latest.at - history[1].at >= window_s:
            history.pop(0)
        oldest = history[0]
        elapsed = latest.at - oldest.at
        if elapsed >= window_s:
            rate = sum(latest.seconds_since(oldest).values()) / elapsed
            if rate <= idle_total + margin_cores:
                return Settled(latest, latest.at - started, True)
        if latest.at - started > deadline_s:
            return Settled(latest, latest.at - started, False)


@dataclass(frozen=True)
class CpuUse:
    """What processes spent on one load: from the reading before it to the one after the
    work it queued was done (`wait_until_quiet`)."""

    net_s: dict[str, float]  # process -> CPU seconds, idle rate x window subtracted
    raw_s: dict[str, float]  # the same with the idle share left in
    window_s: float
    settled: bool
    settle_s: float  # how long the after-reading waited for the CPU to fall back to idle
    load_raw_s: dict[str, float]  # CPU seconds while the load itself ran (idle left in)
    load_s: float  # how long the load itself ran

    def busy_cores(self) -> float:
        """How many cores the processes kept busy, on average, while the load ran."""
        return sum(self.load_raw_s.values()) / self.load_s if self.load_s > 0 else 0.0


async def cpu_during(
    pids: Mapping[str, int],
    idle: Mapping[str, float],
    load: Callable[[], Awaitable[T]],
    *,
    margin_cores: float,
    deadline_s: float,
) -> tuple[T, CpuUse]:
    """Run `load` and attribute the CPU time of `pids` (before -> after the load and the
    asynchronous work it queued) to it, each process's idle rate (`idle_rates`) x the
    window taken off."""
    before = sample_cpu(pids)
    outcome = await load()
    loaded = sample_cpu(pids)
    quiet = await wait_until_quiet(pids, idle, margin_cores=margin_cores, deadline_s=deadline_s)
    window = quiet.sample.at - before.at
    raw = quiet.sample.seconds_since(before)
    net = {name: max(0.0, used - idle.get(name, 0.0) * window) for name, used in raw.items()}
    return outcome, CpuUse(
        net_s=net,
        raw_s=raw,
        window_s=window,
        settled=quiet.settled,
        settle_s=quiet.waited_s,
        load_raw_s=loaded.seconds_since(before),
        load_s=loaded.at - before.at,
    )


def _threads(pid: int) -> list[int]:
    """The thread ids of `pid` and of every live descendant's threads."""
    found: list[int] = []
    for member in _tree(pid, _children()):
        with contextlib.suppress(OSError):
            found.extend(int(tid) for tid in os.listdir(f"/proc/{member}/task"))
    return found


def set_affinity(pids: Iterable[int], cpus: set[int]) -> None:
    """Every thread of `pids` (and their descendants) on `cpus` only; threads started later
    inherit it from the thread that starts them. A thread that ended meanwhile is skipped."""
    for pid in pids:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def alone_on_a_core(pid: int, others: Iterable[int]) -> Iterator[int | None]:
    """`pid` alone on the machine's last core, `others` and this process (so whatever it
    starts: wrk, py-spy) on the rest, restored to every core afterwards. A sampling
    profiler then samples that process only while it runs, not while it waits for a core:
    on a busy 2-core machine py-spy otherwise charges a thread preempted at a system call
    (a socket write that woke a peer) to that system call. Yields the core, or None (and
    changes nothing) on a machine of one core."""
    every = os.sched_getaffinity(0)
    if len(every) < 2:
        yield None
        return
    core = max(every)
    rest = every - {core}
    everyone = [os.getpid(), *others]
    try:
        set_affinity(everyone, rest)
        set_affinity([pid], {core})
        yield core
    finally:
        set_affinity([pid, *everyone], every)


# One socket of `ss -tinpH`: its line, then an indented line of TCP_INFO counters.
_SS_SOCKET = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+)\s+(\S+)\s+users:\((.*)\)\s*$")
_SS_PID = re.compile(r"pid=(\d+)")
_SS_SEGS = re.compile(r"\bdata_segs_out:(\d+)")

# (local address, peer address) -> (pid, data segments sent so far)
SocketCounters = dict[tuple[str, str], tuple[int, int]]


def parse_ss(text: str) -> SocketCounters:
    """The sockets of `ss -tinpH` output with their owner's pid and data_segs_out."""
    found: SocketCounters = {}
    current: tuple[str, str, int] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            match = _SS_SOCKET.match(line)
            pid = _SS_PID.search(match.group(3)) if match else None
            current = (match.group(1), match.group(2), int(pid.group(1))) if match and pid else None
            continue
        segs = _SS_SEGS.search(line)
        if current is not None:
            found[current[0], current[1]] = (current[2], int(segs.group(1)) if segs else 0)
            current = None
    return found


def socket_counters() -> SocketCounters | None:
    """Every TCP socket's owner and data segments sent (the kernel's TCP_INFO, through
    iproute2's `ss`); None where ss is missing or fails."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        done = subprocess.run(
            [ss, "-tinpH"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_ss(done.stdout) if done.returncode == 0 else None


def segments_sent(
    before: SocketCounters, after: SocketCounters, pids: Mapping[str, int], ports: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """Data segments each process of `pids` sent between the two readings to each named
    port (`{"kafka": 9092, "redis": 6379}`). Each Kafka request or Redis pipeline flush is
    at least one segment (more when it is written in parts or exceeds the MSS), so this is
    an upper bound of the round trips. A socket opened in between counts from zero; one
    closed in between is not counted."""
    names = {pid: name for name, pid in pids.items()}
    by_port = {port: target for target, port in ports.items()}
    out: dict[str, dict[str, int]] = {name: dict.fromkeys(ports, 0) for name in pids}
    for (local, peer), (pid, sent) in after.items():
        name = names.get(pid)
        port = _port(peer)
        target = by_port.get(port) if port is not None else None
        if name is None or target is None:
            continue
        earlier = before.get((local, peer))
        out[name][target] += sent - (earlier[1] if earlier is not None else 0)
    return out


def _port(address: str) -> int | None:
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
