"""The three services as processes: health, readiness that follows Redis, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from deploy.local.stack import free_port, start_redis, stop_process
from services.common.settings import Settings
from tests.conftest import ServiceProcess, wait_ready
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

SERVICES = ("live_orders", "inventory", "notifier")


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def test_readiness_follows_redis_and_metrics_are_served(
    make_settings: Callable[..., Settings],
    service_processes: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    redis_port = free_port()
    redis = start_redis(port=redis_port, state_dir=tmp_path / "redis", log=tmp_path / "redis.log")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [service_processes(make_settings(name, redis_url=redis_url)) for name in SERVICES]
    try:
        for proc in procs:
            await wait_ready(proc.url, proc=proc.proc)
            assert await status_of(http, f"{proc.url}/healthz") == 200
            async with http.get(f"{proc.url}/metrics") as response:
                assert response.status == 200
                assert "lc_http_requests_total" in await response.text()

        stop_process(redis.proc)
        stopped = time.monotonic()
        for proc in procs:

            async def unready(url: str = proc.url) -> bool:
                return await status_of(http, f"{url}/readyz") == 503

            await eventually(unready, timeout=5, what=f"{proc.name} /readyz == 503")
        assert time.monotonic() - stopped < 5
        async with http.get(f"{procs[0].url}/readyz") as response:
            assert response.content_type == "application/problem+json"
            body = await response.json(content_type=None)
            assert body["checks"]["redis"] is False
        # Alive all the same: nothing should restart a process because Redis is away.
        assert await status_of(http, f"{procs[0].url}/healthz") == 200

        redis = start_redis(
            port=redis_port, state_dir=tmp_path / "redis", log=tmp_path / "redis.log"
        )
        for proc in procs:
            await wait_ready(proc.url, timeout=15)
    finally:
        stop_process(redis.proc)
