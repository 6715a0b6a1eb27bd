"""The cluster client's connections fail a write on a connection another task closed
(redis-py's cluster client closes every connection when it resets its topology mid-
failover) with a ConnectionError, which is retried and answered 503, instead of the
AttributeError or event-loop RuntimeError that surfaced as a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.redis_connections import GuardedConnection, GuardedSSLConnection
from services.common.redis_scripts import create_redis


class StandInWriter:
    def __init__(self, *, closing: bool = False) -> None:
        self.written: list[bytes] = []
        self.transport = self
        self._closing = closing

    def is_closing(self) -> bool:
        return self._closing

    def writelines(self, data: Any) -> None:
        if self._closing:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        self.written.extend(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)


async def send_through(writer: StandInWriter | None) -> None:
    conn = GuardedConnection(host="127.0.0.1", port=1, socket_timeout=1)
    conn._writer = writer  # type: ignore[assignment]
    try:
        await conn._send_packed_command([b"PING\r\n"])
    finally:
        conn._writer = None  # nothing to close: no warning when it is collected


async def test_a_write_on_an_open_connection_goes_out() -> None:
    writer = StandInWriter()
    await send_through(writer)
    assert writer.written == [b"PING\r\n"]


@pytest.mark.parametrize(
    "writer", [None, StandInWriter(closing=True)], ids=["writer cleared", "transport closing"]
)
async def test_a_write_on_a_connection_closed_under_it_is_a_connection_error(
    writer: StandInWriter | None,
) -> None:
    with pytest.raises(RedisConnectionError, match="closed by another task"):
        await send_through(writer)


@pytest.mark.parametrize(
    ("url", "guarded"),
    [
        ("redis+cluster://127.0.0.1:7001,127.0.0.1:7002", GuardedConnection),
        ("rediss+cluster://127.0.0.1:7001,127.0.0.1:7002", GuardedSSLConnection),
    ],
)
async def test_the_cluster_client_opens_only_guarded_connections(
    url: str, guarded: type[GuardedConnection]
) -> None:
    """redis-py internals (the version is pinned): fails if an upgrade stops the client
    from taking the class from where use_guarded_connections puts it."""
    client = create_redis(url)
    assert isinstance(client, RedisCluster)
    assert client.nodes_manager.connection_kwargs["connection_class"] is guarded
    for node in client.nodes_manager.startup_nodes.values():
        assert type(node.acquire_connection()) is guarded
    await client.aclose()
