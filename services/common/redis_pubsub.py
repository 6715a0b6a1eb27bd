"""Where a subscriber listens to classic Redis pub/sub channels, single node or cluster.

In Redis Cluster a classic PUBLISH, on any node, reaches the subscribers of every node (it
travels the cluster bus), so a subscriber may listen on any node. redis-py's asyncio
`ClusterPubSub` (present in the pinned 8.1) instead picks the node from the channel's
slot in the cluster client's slot cache: before that client has run a command the cache
is empty (a KeyError, not a subscription), and after that node dies it keeps choosing it
until some other command refreshes the slot map. So a subscriber here gets a plain `Redis`
client on one node of the current topology, a different one on each attempt, and closes
it with the subscription. Publishing stays on the cluster client (PUBLISH has no key: any
node will do).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from services.common.redis_scripts import RedisClient


@dataclass
class Subscriber:
    pubsub: PubSub
    # A client of its own (cluster mode) that closes with the subscription.
    own_client: Redis | None = None

    async def aclose(self) -> None:
        try:
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            if self.own_client is not None:
                await self.own_client.aclose()


async def subscriber(redis: RedisClient, attempt: int = 0) -> Subscriber:
    """A PubSub for classic channels; `attempt` rotates over the cluster's nodes, so a
    resubscription after an error tries another node."""
    if not isinstance(redis, RedisCluster):
        return Subscriber(redis.pubsub(ignore_subscribe_messages=True))
    # Learns (or refreshes after a failure) the topology; a no-op once initialized.
    await redis.initialize()
    nodes = sorted(redis.get_primaries(), key=lambda node: node.name)
    node = nodes[attempt % len(nodes)]
    kwargs = redis.get_connection_kwargs()
    client = Redis(
        host=node.host,
        port=int(node.port),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        socket_timeout=kwargs.get("socket_timeout"),
        socket_connect_timeout=kwargs.get("socket_connect_timeout"),
        ssl=bool(kwargs.get("ssl", False)),
    )
    return Subscriber(client.pubsub(ignore_subscribe_messages=True), client)
