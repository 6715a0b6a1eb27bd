"""Readiness: named async checks, each bounded in time, cached briefly.

`/readyz` answers 200 only when every check passes (Kafka reachable, Redis answering, the
service's consumers polling), so a load balancer stops sending traffic within seconds of a
dependency going away and resumes when it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import RedisCluster

from services.common.redis_scripts import RedisClient

Check = Callable[[], Awaitable[bool]]


class Readiness:
    def __init__(self, timeout_s: float = 1.5, cache_s: float = 0.5) -> None:
        self._checks: dict[str, Check] = {}
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._cached: tuple[float, dict[str, bool]] | None = None

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def evaluate(self) -> dict[str, bool]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        outcome = dict(zip(names, results, strict=True))
        self._cached = (time.monotonic(), outcome)
        return outcome

    async def _run(self, check: Check) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await check()
        except Exception:
            return False


def redis_check(client: RedisClient) -> Check:
    async def check() -> bool:
        if isinstance(client, RedisCluster):
            return await cluster_serving(client)
        return bool(await client.ping())

    return check


async def cluster_serving(client: RedisCluster) -> bool:
    """Every primary answers and the cluster serves every slot. A master down without a
    replica makes the cluster refuse its slots (CLUSTERDOWN) after the node timeout: the
    service is then not ready, and answers 503 rather than half an order path."""
    await client.ping(target_nodes=RedisCluster.PRIMARIES)
    info = await client.cluster_info()
    return bool(info.get("cluster_state") == "ok")


def kafka_check(producer: AIOKafkaProducer) -> Check:
    async def check() -> bool:
        # A metadata round trip to the cluster: fails fast when no broker answers.
        return bool(await producer.client.fetch_all_metadata())

    return check
