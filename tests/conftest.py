"""Shared fixtures: one real Kafka broker and one real redis-server per test session, on
ports of their own (never a developer's running stack), and per-test isolation by a fresh
topic prefix and Redis key prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.flash_sale import Endpoints, SaleClient
from deploy.local.stack import ROOT, free_port, start_kafka, start_redis, stop_process
from services.common.auth import Role, mint_token
from services.common.settings import Settings
from services.inventory.app import create_app as create_inventory
from services.live_orders.app import create_app as create_live_orders
from tests.waiting import eventually

JWT_SECRET = "test-secret-" + "x" * 24


@dataclass(frozen=True)
class Backends:
    kafka_bootstrap: str
    redis_url: str
    redis_port: int
    state_dir: Path


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    """Kafka (KRaft) and Redis for the whole session. The first use starts them; tests
    that need neither (tests/unit) never pay for it."""
    state = Path(tempfile.mkdtemp(prefix="lc-test-"))
    kafka_port, controller_port, redis_port = free_port(), free_port(), free_port()
    kafka = start_kafka(
        port=kafka_port,
        controller_port=controller_port,
        state_dir=state / "kafka",
        log=state / "kafka.log",
        heap="768m",
    )
    redis = start_redis(port=redis_port, state_dir=state / "redis", log=state / "redis.log")
    try:
        yield Backends(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            redis_port=redis_port,
            state_dir=state,
        )
    finally:
        stop_process(redis.proc)
        stop_process(kafka.proc)


@pytest.fixture
def prefix() -> str:
    """Unique per test: topics `<prefix>orders`..., Redis keys `<prefix>...`."""
    return new_prefix()


def settings_for(backends: Backends, prefix: str, service: str, **overrides: Any) -> Settings:
    """Settings of one service for the test backends and a key/topic prefix."""
    env = {
        "LC_JWT_SECRET": JWT_SECRET,
        "LC_KAFKA_BOOTSTRAP": backends.kafka_bootstrap,
        "LC_REDIS_URL": backends.redis_url,
        "LC_TOPIC_PREFIX": prefix,
        "LC_REDIS_PREFIX": prefix,
        "LC_TOPIC_PARTITIONS": "4",
        "LC_HTTP_HOST": "127.0.0.1",
        f"LC_{service.upper()}_PORT": str(free_port()),
    }
    settings = Settings.from_env(service, env)
    return settings.replace(instance_id=f"{service}-{uuid.uuid4().hex[:6]}", **overrides)


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def make_settings(backends: Backends, prefix: str) -> Callable[..., Settings]:
    def build(service: str, **overrides: Any) -> Settings:
        return settings_for(backends, prefix, service, **overrides)

    return build


def token(role: Role, sub: str, warehouse_id: str | None = None) -> str:
    return mint_token(JWT_SECRET, sub=sub, role=role, warehouse_id=warehouse_id)


def auth(role: Role, sub: str, warehouse_id: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, sub, warehouse_id)}"}


@dataclass
class RunningApp:
    url: str
    app: web.Application
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def run_app() -> AsyncIterator[Callable[..., Any]]:
    """Start an app in this process on its settings' port; stopped after the test."""
    running: list[RunningApp] = []

    async def start(
        create_app: Callable[[Settings], web.Application], settings: Settings
    ) -> RunningApp:
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", settings.http_port)
        await site.start()
        handle = RunningApp(f"http://127.0.0.1:{settings.http_port}", app, runner)
        running.append(handle)
        return handle

    yield start
    for handle in reversed(running):
        stopping = asyncio.ensure_future(handle.stop())
        done, _ = await asyncio.wait({stopping}, timeout=30)
        if not done:
            # Say which task keeps the app from stopping, instead of a bare test timeout.
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            raise AssertionError(f"the app at {handle.url} did not stop within 30 s")
        stopping.result()


@dataclass
class ServiceProcess:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, 15)


def start_service_process(settings: Settings, log_dir: Path, **extra_env: str) -> ServiceProcess:
    """Start `python -m services.<name>` with exactly these settings."""
    env = {
        **os.environ,
        "LC_JWT_SECRET": settings.jwt_secret,
        "LC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LC_REDIS_URL": settings.redis_url,
        "LC_TOPIC_PREFIX": settings.topic_prefix,
        "LC_REDIS_PREFIX": settings.redis_prefix,
        "LC_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "LC_RESERVATION_TTL_S": str(settings.reservation_ttl_s),
        "LC_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
        "LC_RATE_LIMIT_BURST": str(settings.rate_limit_burst),
        "LC_RATE_LIMIT_PER_S": str(settings.rate_limit_per_s),
        "LC_HTTP_HOST": "127.0.0.1",
        f"LC_{settings.service.upper()}_PORT": str(settings.http_port),
        "LC_INSTANCE_ID": settings.instance_id,
        **extra_env,
    }
    log = log_dir / f"{settings.instance_id}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{settings.service}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(settings.service, f"http://127.0.0.1:{settings.http_port}", proc, log)


@pytest.fixture
def service_processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start a service as its own process; all are stopped after the test."""
    started: list[ServiceProcess] = []

    def start(settings: Settings, **extra_env: str) -> ServiceProcess:
        handle = start_service_process(settings, tmp_path, **extra_env)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        with contextlib.suppress(Exception):
            handle.stop()


async def wait_ready(
    url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `/readyz` until 200 (failing early if the process died)."""
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            assert proc is None or proc.poll() is None, f"process exited with {proc.returncode}"
            try:
                async with session.get(
                    f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout, interval=0.2, what=f"{url}/readyz == 200")


@pytest.fixture
async def order_path(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> Callable[..., Awaitable[SaleClient]]:
    """Start inventory and live_orders in this process (each with its own settings
    overrides) and get a `SaleClient` on them."""

    async def start(
        *, inventory: dict[str, Any] | None = None, live_orders: dict[str, Any] | None = None
    ) -> SaleClient:
        stock = await run_app(create_inventory, make_settings("inventory", **(inventory or {})))
        orders = await run_app(
            create_live_orders, make_settings("live_orders", **(live_orders or {}))
        )
        return SaleClient(http, Endpoints(orders.url, stock.url, "http://127.0.0.1:1", JWT_SECRET))

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session
