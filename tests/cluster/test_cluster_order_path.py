"""The order path on the cluster stack: two processes of every service, three Kafka
brokers (replication 3, min.insync.replicas 2), a Redis Cluster of three masters with a
replica each. A burst sells exactly the stock; a SIGKILLed partition leader or Redis
master loses no acknowledged order, and the services recover on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from redis.cluster import key_slot

from bench.flash_sale import BurstResult, Endpoints, SaleClient, read_back, run_burst
from deploy.local.stack import SERVICES
from tests.cluster.conftest import ClusterBackends, ClusterServices
from tests.conftest import JWT_SECRET
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

STOCK = 300
LIMIT = 2
PARTITIONS = 6


@pytest.fixture
async def client(cluster_services: ClusterServices) -> AsyncIterator[SaleClient]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        yield SaleClient(
            http,
            Endpoints(
                cluster_services.urls("live_orders")[0],
                cluster_services.urls("inventory")[0],
                cluster_services.urls("notifier")[0],
                JWT_SECRET,
            ),
            live_orders_urls=cluster_services.urls("live_orders"),
        )


async def sale(client: SaleClient, sku: str) -> str:
    return await client.start_sale(
        sku, units=STOCK, host_id=f"host-{sku}", price_cents=8800, per_user_limit=LIMIT
    )


async def burst(
    client: SaleClient,
    session_id: str,
    sku: str,
    progress: Callable[[int, int], None] | None = None,
) -> BurstResult:
    return await run_burst(
        client,
        session_id=session_id,
        sku=sku,
        buyers=500,
        attempts=1500,
        max_quantity=LIMIT,
        concurrency=100,
        progress=progress,
    )


async def assert_sale_settled(client: SaleClient, sku: str, result: BurstResult) -> None:
    """Every acknowledged order found in a final state; exactly the stock reserved, no
    buyer over the limit, the counters adding up."""
    orders = await read_back(client, result, rounds=6)
    acknowledged = len(result.final)
    found = sum(1 for oid in result.final if oid in orders)
    print(f"orders acknowledged {acknowledged}, orders found {found}")
    assert found == acknowledged
    states = {oid: order["status"] for oid, order in orders.items()}
    assert set(states.values()) <= {"reserved", "rejected"}, set(states.values())
    held: dict[str, int] = {}
    for oid, order in result.final.items():
        if states[oid] == "reserved":
            held[order["buyer"]] = held.get(order["buyer"], 0) + order["quantity"]
    assert max(held.values()) <= LIMIT
    stock = await client.sku(sku)
    assert stock["available"] + stock["reserved"] + stock["sold"] == stock["received"] == STOCK
    assert stock["reserved"] == sum(held.values()) == STOCK
    assert stock["available"] == 0


async def all_ready(services: ClusterServices) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            for name in SERVICES:
                for url in services.urls(name):
                    try:
                        async with http.get(f"{url}/readyz") as response:
                            if response.status != 200:
                                return False
                    except aiohttp.ClientError:
                        return False
            return True

        await eventually(ready, timeout=90, interval=0.5, what="every /readyz == 200")


@pytest.mark.cluster_smoke
async def test_burst_on_the_cluster_sells_exactly_the_stock(
    client: SaleClient, cluster_services: ClusterServices
) -> None:
    sku = "crab-cluster"
    session_id = await sale(client, sku)
    result = await burst(client, session_id, sku)
    statuses = result.statuses()
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[201] > 0 and statuses[409] > 0
    await assert_sale_settled(client, sku, result)


async def orders_leader(bootstrap: str, topic: str, sku: str) -> int:
    """The node id leading the partition that carries the sku's orders."""
    partition = (murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    leaders = {p["partition"]: p["leader"] for p in described["partitions"]}
    return int(leaders[partition])


async def test_partition_leader_killed_mid_burst_loses_no_acknowledged_order(
    client: SaleClient, cluster_services: ClusterServices, cluster_backends: ClusterBackends
) -> None:
    sku = "tea-leader-kill"
    session_id = await sale(client, sku)
    leader = await orders_leader(
        cluster_backends.ports.kafka_bootstrap, f"{cluster_services.prefix}orders", sku
    )
    broker = cluster_backends.kafka[leader - 1]
    killed = asyncio.Event()

    def kill_early(done: int, total: int) -> None:
        if done >= total // 10 and not killed.is_set():
            broker.proc.kill()
            killed.set()

    try:
        result = await burst(client, session_id, sku, kill_early)
        assert killed.is_set()
        assert broker.proc.wait(10) == -9
        # A request caught by the leader change may answer 503 (publish not acknowledged:
        # the buyer retries with the same key); an order it acknowledged must not be lost.
        assert not [s for s in result.statuses() if s >= 500 and s != 503], result.statuses()
        print(f"503 while the leader moved: {result.statuses()[503]}")
        await all_ready(cluster_services)
        # Those buyers press again with the same key: each gets the order its first press
        # made (the outbox published it), never a second one.
        await retry_failed(client, session_id, sku, result)
        await assert_sale_settled(client, sku, result)
    finally:
        await asyncio.to_thread(cluster_backends.restart_kafka, leader - 1)


def master_of(ports: list[int], key: str) -> int:
    """The port of the master serving the key's slot now."""
    slot = key_slot(key.encode())
    with redis.Redis(port=ports[0], socket_timeout=2) as node:
        slots: Any = node.execute_command("CLUSTER SLOTS")
    for start, end, master, *_ in slots:
        if start <= slot <= end:
            return int(master[1])
    raise AssertionError(f"no master serves slot {slot}")


async def test_redis_master_killed_mid_burst_its_replica_takes_over(
    client: SaleClient, cluster_services: ClusterServices, cluster_backends: ClusterBackends
) -> None:
    sku = "peach-failover"
    session_id = await sale(client, sku)
    ports = list(cluster_backends.ports.redis)
    live = [p for p in ports if cluster_backends.redis[p].proc.poll() is None]
    victim = master_of(live, f"{cluster_services.prefix}inv:{{{sku}}}:stock")
    node = cluster_backends.redis[victim]
    killed = asyncio.Event()

    def kill_early(done: int, total: int) -> None:
        if done >= total // 10 and not killed.is_set():
            node.proc.kill()
            killed.set()

    try:
        result = await burst(client, session_id, sku, kill_early)
        assert killed.is_set()
        survivors = [p for p in ports if p != victim]
        # The replica was promoted: the sku's slot has another master.
        promoted = master_of(survivors, f"{cluster_services.prefix}inv:{{{sku}}}:stock")
        assert promoted != victim
        # While the slot had no master, requests answered a clear 503; none other failed.
        assert not [s for s in result.statuses() if s >= 500 and s != 503], result.statuses()
        print(f"503 while failing over: {result.statuses()[503]}")
        await all_ready(cluster_services)
        # Buyers whose press met a 503 press again (same key) once the services are back.
        retried = await retry_failed(client, session_id, sku, result)
        print(f"retried after a 503: {retried}")
        stock = await client.sku(sku)
        assert stock["available"] + stock["reserved"] + stock["sold"] == stock["received"]
        orders = await read_back(client, result, rounds=6)
        print(f"orders acknowledged {len(result.final)}, orders found {len(orders)}")
        assert len(orders) == len(result.final)
        assert {o["status"] for o in orders.values()} <= {"reserved", "rejected"}
        held = sum(
            result.final[oid]["quantity"] for oid, o in orders.items() if o["status"] == "reserved"
        )
        assert stock["reserved"] == held <= STOCK
    finally:
        if killed.is_set():
            # Reaped (a killed child left unwaited is a ResourceWarning), then started again.
            await asyncio.to_thread(node.proc.wait, 10)
            await asyncio.to_thread(cluster_backends.restart_redis, victim)


async def retry_failed(client: SaleClient, session_id: str, sku: str, result: BurstResult) -> int:
    """Press again, with the same key, every attempt that answered 5xx; each is then
    acknowledged and recorded in `result.final`."""
    failed = [a for a in result.attempts if a.answer.status >= 500]
    for attempt in failed:
        answer = await client.place_order(
            buyer=attempt.buyer,
            session_id=session_id,
            sku=sku,
            quantity=attempt.quantity,
            key=attempt.key,
        )
        assert answer.status in (201, 202, 409), answer
        order = answer.body
        assert order.get("order_id"), order
        result.final[order["order_id"]] = {
            **order,
            "buyer": attempt.buyer,
            "quantity": attempt.quantity,
        }
    return len(failed)
