"""Lua scripts kept as `.lua` files beside the code that calls them.

A script is read with `importlib.resources`, registered once per client, and called by
SHA. When Redis answers NOSCRIPT (it restarted, or SCRIPT FLUSH ran) the script is loaded
again and the call repeated once: the script did not run, so repeating it is safe.

A line `--#include <name>.lua` is replaced by that file of the same package (Lua has no
imports inside Redis): a step several scripts share (releasing a hold) is written once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

KeyT = str | bytes
ArgT = str | bytes | int | float


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

    async def __call__(self, client: Redis, keys: list[KeyT], args: list[ArgT]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


def create_redis(
    url: str, timeout_s: float = 5.0, security: Mapping[str, Any] | None = None
) -> Redis:
    """A client with timeouts that let a dead Redis surface as an error within seconds
    (readiness turns 503) instead of hanging a request. `security`: password, username,
    ssl_ca_certs (transport_security.redis_security_kwargs), over what the URL says."""
    # A blocking pool: during a burst, requests queue for a connection (bounded wait)
    # instead of failing with "too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=5,
        socket_timeout=timeout_s,
        socket_connect_timeout=2,
        health_check_interval=5,
        # After Redis restarts, every pooled connection is dead: a command that meets one
        # reconnects and runs again instead of failing a buyer's request. Only connection
        # errors are retried; every script here is safe to run twice (dedup by order id,
        # idempotency claims, state-machine transitions, absolute lot quantities).
        retry=Retry(
            ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(RedisConnectionError,)
        ),
        **(security or {}),
    )
    # from_pool: the client owns the pool, so `aclose()` also disconnects its connections
    # (`Redis(connection_pool=pool)` would leave them open).
    return Redis.from_pool(pool)
