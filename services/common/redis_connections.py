"""The connection classes of the cluster client: redis-py's, with writes that fail as a
`ConnectionError` when another task closed the connection under them.

redis-py's async cluster client resets its topology by closing the whole client
(`RedisCluster.aclose()`: every connection of every node, in use or not) when a pipeline
meets a connection error, on CLUSTERDOWN, and when a slot map refresh fails: all of
which happen while a master fails over. A command that was connecting or writing on
one of those connections at that moment failed with `AttributeError: 'NoneType' object
has no attribute 'writelines'` (`_writer` cleared) or, with the transport closed but
`_writer` not yet cleared, uvloop's `RuntimeError: unable to perform operation on
<TCPTransport closed=True ...>`. Neither is a `RedisError`: neither redis-py's retries
nor the services' 503 mapping know them, so buyers got 500s. As a `ConnectionError` the
write is retried like any lost connection (the connection reconnects on its next use),
and answered 503 if it still fails.

Upstream fixed the first case the same way (redis/redis-py#4288) after 8.1.0, the
version pinned here; drop these classes once a release with it is pinned.
tests/unit/test_redis_connections.py fails if the client stops using them.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError


class GuardedConnection(Connection):
    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        # Bound once, and no await between the check and the write: a concurrent
        # disconnect() (which closes the transport, then clears `_writer`) cannot come in
        # between. A closing transport refuses writes with an error of the event loop's
        # own (uvloop: RuntimeError "the handler is closed").
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise RedisConnectionError(
                f"connection to {self.host}:{self.port} was closed by another task while in use"
            )
        writer.writelines(command)
        await writer.drain()


class GuardedSSLConnection(GuardedConnection, SSLConnection):
    pass


def use_guarded_connections(cluster: RedisCluster) -> RedisCluster:
    """Make every connection the client opens from now on a guarded one: the nodes it
    discovers take the class from the shared connection kwargs, the seed nodes were built
    already. Before the first command (nothing is connected yet)."""
    kwargs = cluster.nodes_manager.connection_kwargs
    guarded = (
        GuardedSSLConnection
        if issubclass(kwargs["connection_class"], SSLConnection)
        else GuardedConnection
    )
    kwargs["connection_class"] = guarded
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = guarded
    return cluster
