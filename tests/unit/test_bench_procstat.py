"""bench.procstat's newer parts: a profiled process alone on a core (and every process
given all cores back, also when the load in between fails); the segments each process sent
to a server, from `ss`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from bench.procstat import alone_on_a_core, parse_ss, segments_sent, socket_counters


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


SS = """\
ESTAB 0  0  127.0.0.1:36006  127.0.0.1:9092  users:(("python",pid=101,fd=12))
\t cubic rto:204 mss:32768 segs_out:90 data_segs_out:70 data_segs_in:60
ESTAB 0  0  127.0.0.1:52396  127.0.0.1:6379  users:(("python",pid=101,fd=9))
\t cubic wscale:7,7 rto:204 mss:32768 bytes_sent:633 data_segs_out:8 data_segs_in:8
ESTAB 0  0  127.0.0.1:6379  127.0.0.1:52396 users:(("redis-server",pid=7,fd=9))
\t cubic wscale:7,7 rto:204 data_segs_out:8 data_segs_in:8
ESTAB 0  0  127.0.0.1:40000  127.0.0.1:9092  users:(("python",pid=202,fd=5))
\t cubic wscale:7,7 rto:204 segs_out:1 segs_in:1
ESTAB 0  0  [::1]:41000  [::1]:9092
\t cubic data_segs_out:3
"""


def test_ss_output_gives_each_sockets_owner_and_data_segments_sent() -> None:
    sockets = parse_ss(SS)
    assert sockets[("127.0.0.1:36006", "127.0.0.1:9092")] == (101, 70)
    assert sockets[("127.0.0.1:52396", "127.0.0.1:6379")] == (101, 8)
    assert sockets[("127.0.0.1:6379", "127.0.0.1:52396")] == (7, 8)
    assert sockets[("127.0.0.1:40000", "127.0.0.1:9092")] == (202, 0), "nothing sent yet"
    assert len(sockets) == 4, "a socket without an owner shown is left out"


def test_segments_sent_count_per_process_and_server_between_two_readings() -> None:
    before = parse_ss(SS)
    after = dict(before)
    after["127.0.0.1:36006", "127.0.0.1:9092"] = (101, 170)  # +100
    after["127.0.0.1:52396", "127.0.0.1:6379"] = (101, 58)  # +50
    after["127.0.0.1:45000", "127.0.0.1:9092"] = (101, 5)  # opened meanwhile: all 5
    del after["127.0.0.1:40000", "127.0.0.1:9092"]  # closed meanwhile: not counted
    counted = segments_sent(
        before, after, {"live_orders": 101, "inventory": 202}, {"kafka": 9092, "redis": 6379}
    )
    assert counted == {
        "live_orders": {"kafka": 105, "redis": 50},
        "inventory": {"kafka": 0, "redis": 0},
    }


def test_socket_counters_read_this_machines_sockets_with_ss() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        client.sendall(b"ping")
        assert accepted.recv(4) == b"ping"
        sockets = socket_counters()
        assert sockets is not None, "ss (iproute2) is installed by make system-deps"
        mine = sockets[
            client.getsockname()[0] + f":{client.getsockname()[1]}",
            f"127.0.0.1:{server.getsockname()[1]}",
        ]
        assert mine[0] == os.getpid() and mine[1] >= 1
    finally:
        for sock in (client, accepted, server):
            sock.close()
