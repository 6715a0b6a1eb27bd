"""The local cluster stack: three Kafka KRaft nodes (each broker and controller, one
3-voter quorum), a Redis Cluster of three masters with one replica each, and two processes
of every service, all on their own ports and under `.run/cluster/`.

    python -m deploy.local.cluster_stack up     # start everything, wait for every /readyz
    python -m deploy.local.cluster_stack down   # stop everything
    python -m deploy.local.cluster_stack ps     # what runs

It reuses `deploy.local.stack` (Kafka jars, start_kafka, start_redis, the waits, pid
files); `tests/cluster/conftest.py` starts the same cluster on free ports.

Sizing for a 2-core laptop: each broker gets a small heap (LC_KAFKA_HEAP, 384m), the Redis
nodes are idle most of the time, and replicas make a failover (a master killed, its
replica promoted within about `cluster-node-timeout`, 2 s) something one can watch.

Settings (environment): LC_CLUSTER_PORT_BASE (19000: brokers +1..3, controllers +11..13,
Redis +21..26, live_orders +81/+91, inventory +82/+92, notifier +83/+93),
LC_CLUSTER_REDIS_REPLICAS (1; 0 for three masters alone), LC_KAFKA_HEAP (384m),
LC_RUN_DIR (.run: the cluster lives in its `cluster/` directory).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from deploy.local import stack
from deploy.local.stack import (
    SERVICES,
    StackError,
    Started,
    _read_pid,
    _write_pid,
    free_port,
    http_ok,
    new_kafka_cluster_id,
    port_free,
    read_env_file,
    require_free,
    require_tool,
    run_dir,
    start_kafka,
    start_redis,
    start_service,
    wait_kafka,
    wait_until,
)

PROCESSES_PER_SERVICE = 2
KAFKA_NODES = 3
REDIS_MASTERS = 3
# How long a Redis master may be unreachable before the cluster fails it over to its replica.
REDIS_NODE_TIMEOUT_MS = 2000
SLOTS = 16384


@dataclass(frozen=True)
class ClusterPorts:
    kafka: tuple[int, ...]
    controllers: tuple[int, ...]
    redis: tuple[int, ...]
    services: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def from_base(cls, base: int, redis_replicas: int = 1) -> ClusterPorts:
        return cls(
            kafka=tuple(base + 1 + i for i in range(KAFKA_NODES)),
            controllers=tuple(base + 11 + i for i in range(KAFKA_NODES)),
            redis=tuple(base + 21 + i for i in range(REDIS_MASTERS * (1 + redis_replicas))),
            services={
                name: tuple(base + 81 + offset + 10 * i for i in range(PROCESSES_PER_SERVICE))
                for offset, name in enumerate(SERVICES)
            },
        )

    @classmethod
    def free(cls, redis_replicas: int = 1) -> ClusterPorts:
        """Ports the OS has free now (tests: never a developer's running stack)."""
        return cls(
            kafka=tuple(free_port() for _ in range(KAFKA_NODES)),
            controllers=tuple(free_port() for _ in range(KAFKA_NODES)),
            redis=tuple(redis_cluster_port() for _ in range(REDIS_MASTERS * (1 + redis_replicas))),
            services={
                name: tuple(free_port() for _ in range(PROCESSES_PER_SERVICE)) for name in SERVICES
            },
        )

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.kafka)

    @property
    def redis_url(self) -> str:
        """Every node as a seed: the client finds the cluster whichever of them is down."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.redis)


# Redis Cluster nodes listen on a port and on its cluster bus port (+10000). Both are taken
# below Linux's ephemeral range (32768-60999 by default): a port merely free when chosen
# there can be taken by any outgoing connection before redis-server binds it (seen: a
# node "Failed listening on port 59139 (cluster)").
REDIS_PORTS = range(20000, 22768)


def redis_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both outside the
    ephemeral range."""
    for port in random.sample(REDIS_PORTS, len(REDIS_PORTS)):
        if port_free(port) and port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node in 20000-32767")


# ---------------------------------------------------------------------------- kafka


def start_kafka_cluster(
    ports: ClusterPorts,
    state_dir: Path,
    logs: Path,
    heap: str = "384m",
    started: list[Started] | None = None,
) -> list[Started]:
    """Three combined broker+controller nodes of one quorum; returns once each answers.
    `started` collects the nodes as they start, so a caller can stop them if a wait fails."""
    voters = kafka_voters(ports)
    cluster_id_file = state_dir / "kafka-cluster-id"
    if cluster_id_file.exists():
        cluster_id = cluster_id_file.read_text().strip()
    else:
        cluster_id = new_kafka_cluster_id()
        state_dir.mkdir(parents=True, exist_ok=True)
        cluster_id_file.write_text(cluster_id + "\n")
    nodes = started if started is not None else []
    for i in range(len(ports.kafka)):
        nodes.append(
            start_kafka_node(ports, i, state_dir, logs, heap, voters=voters, cluster_id=cluster_id)
        )
    # No node answers metadata before a quorum of controllers elected a leader.
    for node in nodes:
        wait_kafka(node, deadline_s=120)
    return nodes


def start_kafka_node(
    ports: ClusterPorts,
    index: int,
    state_dir: Path,
    logs: Path,
    heap: str,
    *,
    voters: str,
    cluster_id: str,
) -> Started:
    """Node `index` (node.id index+1); not waited for (see start_kafka_cluster). Also
    restarts a node a test killed: its storage is formatted already."""
    return start_kafka(
        port=ports.kafka[index],
        controller_port=ports.controllers[index],
        state_dir=state_dir / f"kafka-{index + 1}",
        log=logs / f"kafka-{index + 1}.log",
        heap=heap,
        node_id=index + 1,
        voters=voters,
        replication=len(ports.kafka),
        cluster_id=cluster_id,
        wait=False,
    )


def kafka_voters(ports: ClusterPorts) -> str:
    return ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(ports.controllers))


# ---------------------------------------------------------------------------- redis


def redis_node_args() -> list[str]:
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(REDIS_NODE_TIMEOUT_MS),
    ]


def start_redis_node(port: int, state_dir: Path, logs: Path) -> Started:
    return start_redis(
        port=port,
        state_dir=state_dir / f"redis-{port}",
        log=logs / f"redis-{port}.log",
        extra_args=redis_node_args(),
    )


def start_redis_cluster(
    ports: ClusterPorts,
    state_dir: Path,
    logs: Path,
    replicas: int = 1,
    started: list[Started] | None = None,
) -> list[Started]:
    """The nodes, then `redis-cli --cluster create` once (a restarted cluster keeps its
    nodes.conf); returns when every node reports all slots served. `started` collects
    the nodes as they start (for the caller to stop if something fails)."""
    nodes = started if started is not None else []
    for port in ports.redis:
        nodes.append(start_redis_node(port, state_dir, logs))
    if not (state_dir / "redis-cluster-created").exists():
        cli = require_tool("redis-cli", "install Debian's redis-tools")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports.redis),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (state_dir / "redis-cluster-created").write_text("yes\n")
    wait_redis_cluster(ports.redis)
    return nodes


def cluster_info(port: int) -> dict[str, str]:
    with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2) as client:
        info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return {str(key): str(value) for key, value in dict(info).items()}


def wait_redis_cluster(ports: Sequence[int], deadline_s: float = 60) -> None:
    """Until every node of `ports` sees the cluster ok, all slots served, every node known."""

    def settled() -> bool:
        for port in ports:
            info = cluster_info(port)
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(SLOTS)
                or int(info.get("cluster_known_nodes", "0")) < len(ports)
            ):
                return False
        return True

    wait_until(f"Redis Cluster on ports {list(ports)}", settled, deadline_s)


# ---------------------------------------------------------------------------- services


def cluster_env(ports: ClusterPorts, secret: str) -> dict[str, str]:
    """The environment every service process shares (its port comes on top)."""
    return {
        "LC_JWT_SECRET": secret,
        "LC_KAFKA_BOOTSTRAP": ports.kafka_bootstrap,
        "LC_REDIS_URL": ports.redis_url,
        "LC_REDIS_CLUSTER": "1",
        "LC_TOPIC_REPLICATION_FACTOR": str(len(ports.kafka)),
        "LC_KAFKA_MIN_INSYNC_REPLICAS": str(max(1, len(ports.kafka) - 1)),
        "LC_HTTP_HOST": "127.0.0.1",
    }


def service_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def start_cluster_services(
    ports: ClusterPorts, env: Mapping[str, str], logs: Path, pid_base: Path | None = None
) -> dict[str, list[subprocess.Popen[bytes]]]:
    """Two processes of every service (`<name>-1`, `<name>-2`), each on its own port."""
    started: dict[str, list[subprocess.Popen[bytes]]] = {}
    for name in SERVICES:
        for i, port in enumerate(ports.services[name], start=1):
            instance = f"{name}-{i}"
            if pid_base is not None and _read_pid(instance, pid_base) is not None:
                continue
            require_free(port, instance, "LC_CLUSTER_PORT_BASE")
            proc = start_service(
                name,
                {
                    **env,
                    f"LC_{name.upper()}_PORT": str(port),
                    "LC_INSTANCE_ID": instance,
                },
                logs / f"{instance}.log",
            )
            if pid_base is not None:
                _write_pid(instance, proc.pid, pid_base)
            started.setdefault(name, []).append(proc)
    return started


def wait_services_ready(
    ports: ClusterPorts,
    logs: Path,
    started: Mapping[str, list[subprocess.Popen[bytes]]],
    deadline_s: float = 90,
) -> None:
    for name in SERVICES:
        procs = started.get(name, [])
        for i, port in enumerate(ports.services[name]):
            url = service_url(port)
            wait_until(
                f"{name}-{i + 1} /readyz",
                lambda url=url: http_ok(f"{url}/readyz"),
                deadline_s,
                procs[i] if i < len(procs) else None,
                logs / f"{name}-{i + 1}.log",
            )


# ---------------------------------------------------------------------------- commands


def cluster_dir() -> Path:
    return run_dir() / "cluster"


def _settings() -> tuple[ClusterPorts, int, str]:
    replicas = int(os.environ.get("LC_CLUSTER_REDIS_REPLICAS", "1"))
    base = int(os.environ.get("LC_CLUSTER_PORT_BASE", "19000"))
    return ClusterPorts.from_base(base, replicas), replicas, os.environ.get("LC_KAFKA_HEAP", "384m")


def _names(ports: ClusterPorts) -> list[str]:
    return [
        *(f"{name}-{i + 1}" for name in SERVICES for i in range(PROCESSES_PER_SERVICE)),
        *(f"redis-{port}" for port in ports.redis),
        *(f"kafka-{i + 1}" for i in range(len(ports.kafka))),
    ]


def up() -> None:
    ports, replicas, heap = _settings()
    base = cluster_dir()
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    previous = read_env_file(base / "stack.env")
    secret = (
        os.environ.get("LC_JWT_SECRET")
        or previous.get("LC_JWT_SECRET")
        or secrets.token_urlsafe(32)
    )
    if any(_read_pid(f"kafka-{i + 1}", base) is None for i in range(len(ports.kafka))):
        for port in (*ports.kafka, *ports.controllers):
            require_free(port, "a Kafka node", "LC_CLUSTER_PORT_BASE")
        for i, node in enumerate(start_kafka_cluster(ports, base, logs, heap)):
            _write_pid(f"kafka-{i + 1}", node.proc.pid, base)
            print(f"kafka-{i + 1:<6} up  127.0.0.1:{node.port}  pid {node.proc.pid}", flush=True)
    if any(_read_pid(f"redis-{port}", base) is None for port in ports.redis):
        for port in ports.redis:
            require_free(port, "a Redis node", "LC_CLUSTER_PORT_BASE")
        for node in start_redis_cluster(ports, base, logs, replicas):
            _write_pid(f"redis-{node.port}", node.proc.pid, base)
        print(f"redis        up  {ports.redis_url}  ({replicas} replica(s) per master)", flush=True)
    env = cluster_env(ports, secret)
    env.update(
        {
            key: value
            for key, value in os.environ.items()
            if key.startswith("LC_")
            and key not in env
            and key not in ("LC_RUN_DIR", "LC_CACHE_DIR", "LC_CLUSTER_PORT_BASE")
        }
    )
    urls = {f"LC_{name.upper()}_URL": service_url(ports.services[name][0]) for name in SERVICES} | {
        f"LC_{name.upper()}_URLS": ",".join(service_url(p) for p in ports.services[name])
        for name in SERVICES
    }
    # Written before the services start: a process left running by an `up` that failed
    # later shares the secret with the ones a second `up` starts.
    (base / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in sorted((env | urls).items())))
    started = start_cluster_services(ports, env, logs, base)
    wait_services_ready(ports, logs, started)
    for name in SERVICES:
        print(f"{name:<12} up  {urls[f'LC_{name.upper()}_URLS']}  (ready)", flush=True)
    print(f"environment written to {base / 'stack.env'}", flush=True)


def down() -> None:
    ports, _, _ = _settings()
    stack.down(cluster_dir(), _names(ports))


def ps() -> None:
    ports, _, _ = _settings()
    for name in _names(ports):
        pid = _read_pid(name, cluster_dir())
        where = ""
        service = name.rsplit("-", 1)[0]
        if service in SERVICES:
            url = service_url(ports.services[service][int(name.rsplit("-", 1)[1]) - 1])
            where = f"{url}  ready={http_ok(url + '/readyz')}" if pid else url
        print(f"{name:<14} {'running pid ' + str(pid) if pid else 'stopped':<20} {where}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "ps"])
    args = parser.parse_args(argv)
    try:
        {"up": up, "down": down, "ps": ps}[args.command]()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(
            f"error: {' '.join(map(str, exc.cmd[:3]))} ... failed with exit code {exc.returncode}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
