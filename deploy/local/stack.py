"""The local stack without Docker: a real Kafka (KRaft) broker, a real redis-server, and
the three services as processes.

    python -m deploy.local.stack fetch   # resolve Kafka's jars from Maven Central (cached)
    python -m deploy.local.stack up      # start everything, wait for every /readyz
    python -m deploy.local.stack down    # stop everything
    python -m deploy.local.stack ps      # what runs, with pids and ports
    python -m deploy.local.stack logs    # the tail of every log

`tests/conftest.py` uses `start_kafka` and `start_redis` from here to start its own broker
and Redis on free ports, so the tests and `make up` run the same way.

Settings (environment): LC_KAFKA_PORT (9092), LC_KAFKA_CONTROLLER_PORT (9093),
LC_REDIS_PORT (6379), LC_LIVE_ORDERS_PORT (8081), LC_INVENTORY_PORT (8082),
LC_NOTIFIER_PORT (8083), LC_RUN_DIR (.run), LC_CACHE_DIR (~/.cache/livecommerce),
LC_KAFKA_VERSION (see KAFKA_VERSION), LC_KAFKA_HEAP (1g).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

# Kafka 4.4.0 is the newest 4.x on Maven Central that this project tested aiokafka 0.14
# against (produce, consume in groups, commits, admin) — see docs/operations.md.
KAFKA_VERSION = "4.4.0"
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVICES = ("live_orders", "inventory", "notifier")


class StackError(RuntimeError):
    """Something the operator must fix; the message says what."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "livecommerce"
    return Path(os.environ.get("LC_CACHE_DIR", default))


def kafka_version() -> str:
    return os.environ.get("LC_KAFKA_VERSION", KAFKA_VERSION)


def kafka_libs() -> Path:
    return cache_dir() / f"kafka-{kafka_version()}" / "libs"


# ---------------------------------------------------------------------------- tools


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found on PATH: {hint}")
    return path


def ensure_redis_server() -> str:
    """redis-server from Debian; installed when missing and we may (root with apt-get)."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server missing: installing Debian's package", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return require_tool("redis-server", "apt-get install redis-server did not provide it")
    raise StackError("redis-server not found: install it (Debian: apt-get install redis-server)")


def fetch_kafka() -> Path:
    """Resolve the broker's jars with Maven into the cache; a no-op once they are there."""
    libs = kafka_libs()
    stamp = libs.parent / ".complete"
    if stamp.exists():
        return libs
    require_tool(
        "java", "install OpenJDK 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
    )
    mvn = require_tool("mvn", "install Maven (Debian: apt-get install maven)")
    print(f"fetching Kafka {kafka_version()} jars from Maven Central into {libs}", flush=True)
    started = time.monotonic()
    if libs.exists():
        shutil.rmtree(libs)
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(HERE / "kafka-pom.xml"),
            f"-Dkafka.version={kafka_version()}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    if not any(libs.glob(f"kafka_2.13-{kafka_version()}.jar")):
        raise StackError(f"Maven finished but kafka_2.13-{kafka_version()}.jar is not in {libs}")
    stamp.write_text(f"{kafka_version()}\n")
    print(f"Kafka jars ready in {time.monotonic() - started:.1f}s", flush=True)
    return libs


# ---------------------------------------------------------------------------- ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_free(port: int, what: str, variable: str) -> None:
    if not port_free(port):
        raise StackError(
            f"port {port} for {what} is already in use; stop whatever holds it "
            f"(`ss -ltnp 'sport = :{port}'`) or set {variable} to another port"
        )


def wait_until(
    what: str,
    probe: object,
    deadline_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll `probe()` until it is true; fail with the log's tail when the deadline passes
    or the process died."""
    assert callable(probe)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode} while starting{_tail(log)}")
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.2)
    raise StackError(f"{what} not ready within {deadline_s:.0f}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n  " + "\n  ".join(text)


# ---------------------------------------------------------------------------- kafka


@dataclass(frozen=True)
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


def _kafka_properties(
    port: int,
    controller_port: int,
    data_dir: Path,
    *,
    node_id: int = 1,
    voters: str | None = None,
    replication: int = 1,
) -> str:
    """One combined broker+controller. `voters` (`1@host:port,2@host:port,...`) names the
    controller quorum of a multi-node cluster; `replication` is what its internal topics
    (and topics created without a factor) get, with min.insync.replicas one less."""
    min_isr = max(1, replication - 1)
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node_id}",
            f"controller.quorum.voters={voters or f'{node_id}@127.0.0.1:{controller_port}'}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data_dir}",
            # Internal topics cannot have more replicas than brokers (one local node: 1).
            f"offsets.topic.replication.factor={replication}",
            "offsets.topic.num.partitions=12",
            f"transaction.state.log.replication.factor={replication}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replication}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            f"default.replication.factor={replication}",
            f"min.insync.replicas={min_isr}",
            # Groups form at once: members of a test or of `make up` join within seconds.
            "group.initial.rebalance.delay.ms=0",
            # Topics come from provisioning (partitions, compaction), never by accident.
            "auto.create.topics.enable=false",
            # Threads sized to the machine, not to a broker host (3 network, 8 request
            # handler threads by default): on 2 cores a request handed to one of 8 handler
            # threads in turn meets a cold one each time. 1 + 1 there cost the broker
            # 10-20% less CPU per produce round trip and took ~15% off its latency
            # (bench/RESULTS.md, fifth session of issue #7).
            f"num.network.threads={_broker_threads(4)}",
            f"num.io.threads={_broker_threads(2)}",
            "",
        ]
    )


def _broker_threads(cores_per_thread: int) -> int:
    return max(1, (os.cpu_count() or 2) // cores_per_thread)


def new_kafka_cluster_id() -> str:
    # A cluster id is a base64url UUID without padding, as `kafka-storage random-uuid`.
    # One starting with "-" would be read as an option by the storage tool.
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def start_kafka(
    *,
    port: int,
    controller_port: int,
    state_dir: Path,
    log: Path,
    heap: str = "1g",
    node_id: int = 1,
    voters: str | None = None,
    replication: int = 1,
    cluster_id: str | None = None,
    wait: bool = True,
) -> Started:
    """Format the storage once, start the broker, and (`wait`) return once it answers
    metadata. The nodes of a quorum (`voters`, one `cluster_id`) are started with
    `wait=False` and then waited for together (`wait_kafka`): none answers alone."""
    java = require_tool("java", "install OpenJDK 17 or newer (Debian: openjdk-17-jre-headless)")
    libs = fetch_kafka()
    data_dir = state_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "server.properties"
    config.write_text(
        _kafka_properties(
            port,
            controller_port,
            data_dir,
            node_id=node_id,
            voters=voters,
            replication=replication,
        )
    )
    classpath = f"{libs}/*"
    base = [java, f"-Dlog4j2.configurationFile={HERE / 'log4j2.yaml'}", "-cp", classpath]
    if not (data_dir / "meta.properties").exists():
        subprocess.run(
            [
                *base,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id or new_kafka_cluster_id(),
                "-c",
                str(config),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                java,
                f"-Xms{min(256, _megabytes(heap))}m",
                f"-Xmx{heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                *base[1:],
                "kafka.Kafka",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Started("kafka", proc, port, log)
    if wait:
        wait_kafka(started)
    return started


def _megabytes(heap: str) -> int:
    """A JVM size (`768m`, `1g`) in MiB."""
    number, unit = heap[:-1], heap[-1].lower()
    if unit == "g":
        return int(number) * 1024
    if unit == "m":
        return int(number)
    return int(heap) // (1024 * 1024)


def wait_kafka(started: Started, deadline_s: float = 90) -> None:
    """Until the broker answers metadata (fails early if it exited)."""
    wait_until(
        f"Kafka on port {started.port}",
        lambda: asyncio.run(_kafka_answers(f"127.0.0.1:{started.port}")),
        deadline_s,
        started.proc,
        started.log,
    )


async def _kafka_answers(bootstrap: str) -> bool:
    # aiokafka logs every refused connection while the broker boots: expected here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


# ---------------------------------------------------------------------------- redis

# When Redis rewrites its append-only file (a forked child serializes the whole dataset):
# once the AOF has grown by twice its size after the last rewrite, and not before it is
# 512 MB. Redis' defaults (100%, 64 MB) rewrite every 64 MB while the dataset is small: a
# sale appends ~1 KB per attempt, so a fresh Redis re-serialized everything every ~60,000
# attempts, a fifth to a half of Redis' CPU per order (bench/RESULTS.md, seventh session).
# The price: the AOF on disk reaches ~3x the dataset (or 512 MB), and a restart replays at
# most that much (docs/deploy.md). compose.yaml passes the same flags (a test holds them equal).
REDIS_AOF_REWRITE_ARGS = (
    "--auto-aof-rewrite-percentage",
    "200",
    "--auto-aof-rewrite-min-size",
    "512mb",
)


def start_redis(
    *, port: int, state_dir: Path, log: Path, extra_args: Sequence[str] = ()
) -> Started:
    """redis-server with AOF every second and no eviction: stock counters and holds must
    never be dropped to make room, and a restart loses at most about a second.
    `extra_args` are more `--option value` pairs (a cluster node's)."""
    server = ensure_redis_server()
    state_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(state_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            *REDIS_AOF_REWRITE_ARGS,
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(log),
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until(f"Redis on port {port}", lambda: _redis_pings(port), 20, proc, log)
    return Started("redis", proc, port, log)


def _redis_pings(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ---------------------------------------------------------------------------- stack


def run_dir() -> Path:
    return Path(os.environ.get("LC_RUN_DIR", ROOT / ".run"))


def _port(variable: str, default: int) -> int:
    return int(os.environ.get(variable, default))


def _pid_file(name: str, base: Path | None = None) -> Path:
    return (base or run_dir()) / "pids" / f"{name}.pid"


def _read_pid(name: str, base: Path | None = None) -> int | None:
    path = _pid_file(name, base)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return None
    return None if _is_zombie(pid) else pid


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not reaped (its parent, `stack up`, is long gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _write_pid(name: str, pid: int, base: Path | None = None) -> None:
    path = _pid_file(name, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                values[key.strip()] = value.strip()
    return values


def stack_env() -> dict[str, str]:
    """The environment of the stack, with a JWT secret generated once and then kept."""
    previous = read_env_file(run_dir() / "stack.env")
    kafka_port = _port("LC_KAFKA_PORT", 9092)
    redis_port = _port("LC_REDIS_PORT", 6379)
    ports = {
        s: _port(f"LC_{s.upper()}_PORT", d)
        for s, d in zip(SERVICES, (8081, 8082, 8083), strict=True)
    }
    secret = (
        os.environ.get("LC_JWT_SECRET")
        or previous.get("LC_JWT_SECRET")
        or secrets.token_urlsafe(32)
    )
    env = {
        "LC_JWT_SECRET": secret,
        "LC_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        "LC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LC_LIVE_ORDERS_URL": f"http://127.0.0.1:{ports['live_orders']}",
        "LC_INVENTORY_URL": f"http://127.0.0.1:{ports['inventory']}",
        "LC_NOTIFIER_URL": f"http://127.0.0.1:{ports['notifier']}",
        "LC_LIVE_ORDERS_PORT": str(ports["live_orders"]),
        "LC_INVENTORY_PORT": str(ports["inventory"]),
        "LC_NOTIFIER_PORT": str(ports["notifier"]),
        "LC_TOPIC_PREFIX": os.environ.get("LC_TOPIC_PREFIX", "lc."),
        "LC_RESERVATION_TTL_S": os.environ.get("LC_RESERVATION_TTL_S", "900"),
    }
    for key, value in os.environ.items():
        if key.startswith("LC_") and key not in env and key not in ("LC_RUN_DIR", "LC_CACHE_DIR"):
            env[key] = value
    return env


def start_service(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def up() -> None:
    env = stack_env()
    base = run_dir()
    (base / "logs").mkdir(parents=True, exist_ok=True)
    kafka_port = _port("LC_KAFKA_PORT", 9092)
    controller_port = _port("LC_KAFKA_CONTROLLER_PORT", 9093)
    redis_port = _port("LC_REDIS_PORT", 6379)
    if _read_pid("kafka") is None:
        require_free(kafka_port, "Kafka", "LC_KAFKA_PORT")
        require_free(controller_port, "the Kafka controller", "LC_KAFKA_CONTROLLER_PORT")
        kafka = start_kafka(
            port=kafka_port,
            controller_port=controller_port,
            state_dir=base / "kafka",
            log=base / "logs" / "kafka.log",
            heap=os.environ.get("LC_KAFKA_HEAP", "1g"),
        )
        _write_pid("kafka", kafka.proc.pid)
        print(f"kafka        up  127.0.0.1:{kafka_port}  pid {kafka.proc.pid}", flush=True)
    if _read_pid("redis") is None:
        require_free(redis_port, "Redis", "LC_REDIS_PORT")
        redis = start_redis(
            port=redis_port, state_dir=base / "redis", log=base / "logs" / "redis.log"
        )
        _write_pid("redis", redis.proc.pid)
        print(f"redis        up  127.0.0.1:{redis_port}  pid {redis.proc.pid}", flush=True)
    (base / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    procs = {}
    for name in SERVICES:
        if _read_pid(name) is not None:
            continue
        port = int(env[f"LC_{name.upper()}_PORT"])
        require_free(port, name, f"LC_{name.upper()}_PORT")
        proc = start_service(name, env, base / "logs" / f"{name}.log")
        _write_pid(name, proc.pid)
        procs[name] = proc
    for name in SERVICES:
        url = env[f"LC_{name.upper()}_URL"]
        wait_until(
            f"{name} /readyz",
            lambda url=url: http_ok(f"{url}/readyz"),
            60,
            procs.get(name),
            base / "logs" / f"{name}.log",
        )
        print(f"{name:<12} up  {url}  (ready)", flush=True)
    print(f"environment written to {base / 'stack.env'}", flush=True)


def down(base: Path | None = None, names: Sequence[str] | None = None) -> None:
    """Stop what the pid files under `base` (default: the run dir) name, in this order:
    services first (they flush and leave their consumer groups), then the data stores.
    Default: the stack, and any other process with a pid file there (the second service
    processes of `make bench-scale`, had it been killed before it stopped them)."""
    if names is None:
        names = (*SERVICES, *extra_processes(base), "redis", "kafka")
    for name in names:
        pid = _read_pid(name, base)
        if pid is None:
            _pid_file(name, base).unlink(missing_ok=True)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _pid_file(name, base).unlink(missing_ok=True)
        print(f"{name:<12} stopped (pid {pid})", flush=True)


def extra_processes(base: Path | None = None) -> list[str]:
    """Pid files under `base` that name no process `up` starts."""
    known = {*SERVICES, "redis", "kafka"}
    pids = (base or run_dir()) / "pids"
    return sorted(p.stem for p in pids.glob("*.pid") if p.stem not in known)


def ps() -> None:
    env = read_env_file(run_dir() / "stack.env")
    for name in ("kafka", "redis", *SERVICES):
        pid = _read_pid(name)
        where = ""
        if name in SERVICES and env:
            url = env.get(f"LC_{name.upper()}_URL", "")
            where = f"{url}  ready={http_ok(url + '/readyz')}" if pid else url
        print(f"{name:<12} {'running pid ' + str(pid) if pid else 'stopped':<20} {where}")


def logs(lines: int) -> None:
    for path in sorted((run_dir() / "logs").glob("*.log")):
        print(f"==> {path} <==")
        print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["fetch", "up", "down", "ps", "logs"])
    parser.add_argument("-n", "--lines", type=int, default=40, help="log lines per file (logs)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch_kafka()
        elif args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "ps":
            ps()
        else:
            logs(args.lines)
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
