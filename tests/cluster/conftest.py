"""The cluster stack for `pytest -m cluster` (`make test-cluster`): three KRaft brokers and
a Redis Cluster of three masters with a replica each, started once per session on free
ports by deploy/local/cluster_stack.py (never a developer's running stack); each test
gets two processes of every service with a key and topic prefix of its own.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from deploy.local import cluster_stack
from deploy.local.cluster_stack import ClusterPorts
from deploy.local.stack import SERVICES, Started, free_port, stop_process, wait_kafka
from tests.conftest import JWT_SECRET, new_prefix

KAFKA_HEAP = "320m"


@dataclass
class ClusterBackends:
    ports: ClusterPorts
    state_dir: Path
    kafka: list[Started]
    redis: dict[int, Started]
    cluster_id: str = ""

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def restart_kafka(self, index: int) -> None:
        """Start node `index` again (after a test killed it) and wait until it answers."""
        node = cluster_stack.start_kafka_node(
            self.ports,
            index,
            self.state_dir,
            self.logs,
            KAFKA_HEAP,
            voters=cluster_stack.kafka_voters(self.ports),
            cluster_id=self.cluster_id,
        )
        self.kafka[index] = node
        wait_kafka(node, deadline_s=120)

    def restart_redis(self, port: int) -> None:
        """Start a killed node again; it rejoins (as a replica once its master failed over)."""
        self.redis[port] = cluster_stack.start_redis_node(port, self.state_dir, self.logs)
        cluster_stack.wait_redis_cluster(self.ports.redis, deadline_s=60)


@pytest.fixture(scope="session")
def cluster_backends() -> Iterator[ClusterBackends]:
    state = Path(tempfile.mkdtemp(prefix="lc-cluster-test-"))
    ports = ClusterPorts.free()
    backends = ClusterBackends(ports, state, [], {})
    try:
        backends.kafka = cluster_stack.start_kafka_cluster(
            ports, state, state / "logs", KAFKA_HEAP, started=backends.kafka
        )
        backends.cluster_id = (state / "kafka-cluster-id").read_text().strip()
        redis_nodes: list[Started] = []
        try:
            cluster_stack.start_redis_cluster(
                ports, state, state / "logs", replicas=1, started=redis_nodes
            )
        finally:
            backends.redis = {node.port: node for node in redis_nodes}
        yield backends
    finally:
        for started in (*backends.redis.values(), *backends.kafka):
            with contextlib.suppress(Exception):
                stop_process(started.proc)


@dataclass
class ClusterServices:
    ports: ClusterPorts
    prefix: str
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)

    def urls(self, service: str) -> list[str]:
        return [cluster_stack.service_url(port) for port in self.ports.services[service]]


@pytest.fixture
def cluster_services(cluster_backends: ClusterBackends) -> Iterator[ClusterServices]:
    """Two processes of every service on the cluster, on free ports, with this test's own
    prefix; returns once every /readyz answers 200."""
    prefix = new_prefix()
    ports = replace(
        cluster_backends.ports,
        services={name: (free_port(), free_port()) for name in SERVICES},
    )
    env = {
        **cluster_stack.cluster_env(ports, JWT_SECRET),
        "LC_TOPIC_PREFIX": prefix,
        "LC_REDIS_PREFIX": prefix,
        "LC_TOPIC_PARTITIONS": "6",
    }
    services = ClusterServices(ports, prefix)
    try:
        services.procs = cluster_stack.start_cluster_services(ports, env, cluster_backends.logs)
        cluster_stack.wait_services_ready(ports, cluster_backends.logs, services.procs)
        yield services
    finally:
        for procs in services.procs.values():
            for proc in procs:
                with contextlib.suppress(Exception):
                    stop_process(proc, 15)
