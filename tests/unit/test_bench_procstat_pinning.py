"""bench.procstat.alone_on_a_core: the profiled process gets a core to itself, and every
process gets all cores back afterwards (also when the load in between fails)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.procstat import alone_on_a_core


def test_a_process_alone_on_the_last_core_and_everything_restored() -> None:
    every = os.sched_getaffinity(0)
    alone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError), alone_on_a_core(alone.pid, [other.pid]) as core:
            if len(every) < 2:
                assert core is None
            else:
                assert core == max(every)
                assert os.sched_getaffinity(alone.pid) == {core}
                assert os.sched_getaffinity(other.pid) == every - {core}
                assert os.sched_getaffinity(0) == every - {core}, "and what the bench starts"
            raise RuntimeError("the load failed")
        for pid in (alone.pid, other.pid, 0):
            assert os.sched_getaffinity(pid) == every
    finally:
        for proc in (alone, other):
            proc.kill()
            proc.wait()
