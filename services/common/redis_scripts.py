"""Lua scripts kept as `.lua` files beside the code that calls them.

A script is read with `importlib.resources`, registered once per client, and called by
SHA. When Redis answers NOSCRIPT (it restarted, or SCRIPT FLUSH ran) the script is loaded
again and the call repeated once: the script did not run, so repeating it is safe.

A line `--#include <name>.lua` is replaced by that file of the same package (Lua has no
imports inside Redis): a step several scripts share (releasing a hold) is written once.

`create_redis` makes the client every service uses: one `Redis` on a pool, or, in cluster
mode (`LC_REDIS_CLUSTER=1` or a `redis+cluster://h1:p1,h2:p2` URL), a `RedisCluster` that
routes each command to the node of its key's slot. Every script's KEYS share one hash
tag (tests/unit/test_redis_slots.py holds each key builder to that), so EVALSHA goes to
one node; SCRIPT LOAD goes to every primary, so NOSCRIPT on a node promoted after a
failover is recovered the same way as after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from services.common.redis_connections import use_guarded_connections
from services.common.settings import is_cluster_url

KeyT = str | bytes
ArgT = str | bytes | int | float
# What create_redis returns: the stores take either; both speak the same commands.
RedisClient: TypeAlias = Redis | RedisCluster


# The longest a script call may take in cluster mode, retries and a slot map refresh
# included (a failover settles within the node timeout, 2 s locally, plus the election).
CLUSTER_CALL_TIMEOUT_S = 15.0

_INCLUDE = re.compile(r"^--#include ([\w.-]+\.lua)$", re.MULTILINE)


def read_script(package: str, filename: str, including: tuple[str, ...] = ()) -> str:
    """The script's source with its `--#include` lines replaced by the files they name."""
    if filename in including:
        raise ValueError(f"{filename} includes itself: {' -> '.join((*including, filename))}")
    text = resources.files(package).joinpath(filename).read_text("utf-8")
    return _INCLUDE.sub(
        lambda match: read_script(package, match.group(1), (*including, filename)).rstrip("\n"),
        text,
    )


class LuaScript:
    def __init__(self, package: str, filename: str) -> None:
        self.name = filename
        self.source = read_script(package, filename)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client: RedisClient, keys: list[KeyT], args: list[ArgT]) -> Any:
        if isinstance(client, RedisCluster):
            # A call caught by a failover must not hang its caller (a consumer mid-batch):
            # bounded, it fails and the caller's retry runs it again (every script here
            # is safe to run twice).
            async with asyncio.timeout(CLUSTER_CALL_TIMEOUT_S):
                return await self._run(client, keys, args)
        return await self._run(client, keys, args)

    async def _run(self, client: RedisClient, keys: list[KeyT], args: list[ArgT]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


def _retry() -> Retry:
    # After Redis restarts, every pooled connection is dead: a command that meets one
    # reconnects and runs again instead of failing a buyer's request. Only connection
    # errors are retried; every script here is safe to run twice (dedup by order id,
    # idempotency claims, state-machine transitions, absolute lot quantities).
    return Retry(
        ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(RedisConnectionError,)
    )


def create_redis(
    url: str,
    timeout_s: float = 5.0,
    *,
    cluster: bool = False,
    security: Mapping[str, Any] | None = None,
) -> RedisClient:
    """A client with timeouts that let a dead Redis surface as an error within seconds
    (readiness turns 503) instead of hanging a request. `cluster` (or a cluster URL):
    a `RedisCluster` seeded from the URL's nodes. `security`: password, username,
    ssl_ca_certs (transport_security.redis_security_kwargs), over what the URL says."""
    if cluster or is_cluster_url(url):
        return create_redis_cluster(url, timeout_s, security)
    # A blocking pool: during a burst, requests queue for a connection (bounded wait)
    # instead of failing with "too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=5,
        socket_timeout=timeout_s,
        socket_connect_timeout=2,
        health_check_interval=5,
        retry=_retry(),
        **(security or {}),
    )
    # from_pool: the client owns the pool, so `aclose()` also disconnects its connections
    # (`Redis(connection_pool=pool)` would leave them open).
    return Redis.from_pool(pool)


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """(host, port) of each node a cluster URL names: `redis+cluster://h1:p1,h2:p2/0`,
    or a plain `redis://host:port` (LC_REDIS_CLUSTER=1 with one seed)."""
    netloc = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    seeds = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        seeds.append((host.strip("[]"), int(port or 6379)))
    return seeds


def create_redis_cluster(
    url: str, timeout_s: float = 5.0, security: Mapping[str, Any] | None = None
) -> RedisCluster:
    """The cluster client. Per node it keeps up to 256 connections (redis-py's cluster
    pools do not queue: past the limit a command fails), the same timeouts as a single
    node, and retries connection errors, CLUSTERDOWN and a slot without a node after
    refreshing the slot map: a failover (replica promoted) costs a few failed attempts,
    not a failed request, once the cluster has settled."""
    scheme = url.split("://", 1)[0]
    split = urlsplit(url.replace(scheme, "redis", 1).split(",", 1)[0])
    tls = scheme in ("rediss", "rediss+cluster")
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_seeds(url)],
        username=unquote(split.username) if split.username else None,
        password=unquote(split.password) if split.password else None,
        ssl=tls,
        max_connections=256,
        socket_timeout=timeout_s,
        socket_connect_timeout=2,
        health_check_interval=5,
        retry=_retry(),
        **(security or {}),
    )
    # A command caught by the client resetting itself mid-failover fails as a lost
    # connection (retried, or 503), not as an AttributeError (500): redis_connections.py.
    return use_guarded_connections(cluster)
