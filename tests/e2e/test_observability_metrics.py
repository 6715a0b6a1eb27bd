"""Every metric the alert rules and the Grafana dashboard use is exported by a running
service: the three services as processes, a small sale through them (reservations, a
sold-out answer, payments, a cancel, a completed pick, a dead letter, a host and a picker
watching), then their /metrics scraped.

Series of Prometheus itself (`up`) and of redis_exporter (`redis_*`, the Redis memory
alerts) are not the services' to export and are left out
(tests/observability_config.is_ours).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.flash_sale import Endpoints, SaleClient
from services.common.kafka_topics import Topics
from tests.conftest import (
    JWT_SECRET,
    Backends,
    ServiceProcess,
    new_prefix,
    settings_for,
    start_service_process,
    wait_ready,
)
from tests.observability_config import is_ours, used_metric_names
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

SERVICES = ("live_orders", "inventory", "notifier")
SKU = "peach-obs"
WAREHOUSE = "wh-obs"
HOST = "host-obs"
STOCK = 4
BUYERS = 6


@dataclass
class Stack:
    prefix: str
    backends: Backends
    processes: dict[str, ServiceProcess]
    client: SaleClient


@pytest.fixture(scope="module")
async def stack(
    backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    prefix = new_prefix()
    log_dir = tmp_path_factory.mktemp("observability")
    processes = {
        name: start_service_process(settings_for(backends, prefix, name), log_dir)
        for name in SERVICES
    }
    try:
        for proc in processes.values():
            await wait_ready(proc.url, proc=proc.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            endpoints = Endpoints(
                processes["live_orders"].url,
                processes["inventory"].url,
                processes["notifier"].url,
                JWT_SECRET,
            )
            yield Stack(prefix, backends, processes, SaleClient(http, endpoints))
    finally:
        for proc in processes.values():
            proc.stop()


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    """sample name (with _total, _bucket, ...) -> [(labels, value)] of one /metrics."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


async def scrape_all(stack: Stack) -> dict[str, Samples]:
    return {
        name: await scrape(stack.client.http, proc.url) for name, proc in stack.processes.items()
    }


async def dead_letter(stack: Stack) -> None:
    """A message no consumer can decode, on the orders topic (inventory and notifier
    read it): each sends it to the DLQ."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.backends.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            Topics.with_prefix(stack.prefix).orders, b"not an event", key=SKU.encode()
        )
    finally:
        await producer.stop()


async def test_every_metric_of_the_rules_and_the_dashboard_is_exported(stack: Stack) -> None:
    client = stack.client
    http = client.http
    session_id = await client.start_sale(
        SKU,
        units=STOCK,
        host_id=HOST,
        price_cents=1200,
        per_user_limit=1,
        warehouse_id=WAREHOUSE,
    )
    notifier = stack.processes["notifier"].url.replace("http", "ws", 1)
    host_ws = await http.ws_connect(
        f"{notifier}/v1/sessions/{session_id}/live", headers=client.headers("host", HOST)
    )
    picker_headers = {
        "Authorization": f"Bearer {client.token('warehouse', 'staff-obs', WAREHOUSE)}"
    }
    picks_ws = await http.ws_connect(
        f"{notifier}/v1/warehouses/{WAREHOUSE}/picks/live", headers=picker_headers
    )
    try:
        answers = [
            await client.place_order(
                buyer=f"buyer-{i}", session_id=session_id, sku=SKU, quantity=1, key=f"k-{i}"
            )
            for i in range(BUYERS)
        ]
        reserved = [a.body for a in answers if a.status == 201]
        assert len(reserved) == STOCK
        assert {a.body["reason"] for a in answers if a.status == 409} == {"sold_out"}
        paid = reserved[:2]
        for order in paid:
            answer = await client.pay(
                order["order_id"], order["total_cents"], f"ref-{order['order_id']}"
            )
            assert answer.status == 200, answer.body
        cancelled = await client.cancel(buyer="buyer-2", order_id=reserved[2]["order_id"])
        assert cancelled.status == 200
        await dead_letter(stack)

        wanted = {name for name in used_metric_names() if is_ours(name)}

        async def all_exported() -> bool:
            exported = set().union(*(s.keys() for s in (await scrape_all(stack)).values()))
            missing = sorted(wanted - exported)
            assert not missing, f"used by the rules or the dashboard, exported by none: {missing}"
            return True

        await eventually(all_exported, timeout=30, interval=0.5, what="every metric exported")

        # The series added for the dashboard and the alerts say what happened.
        def values(samples: Samples, name: str, **labels: str) -> list[float]:
            return [
                v
                for found, v in samples.get(name, [])
                if all(found.get(k) == want for k, want in labels.items())
            ]

        async def open_picks_are(count: int) -> bool:
            notifier_samples = await scrape(http, stack.processes["notifier"].url)
            found = values(notifier_samples, "lc_notifier_open_picks", warehouse_id=WAREHOUSE)
            assert found == [count], found
            return True

        await eventually(lambda: open_picks_are(len(paid)), timeout=20, what="open picks")
        picks = await client.expect(
            "GET",
            f"{stack.processes['notifier'].url}/v1/warehouses/{WAREHOUSE}/picks?status=open",
            role="admin",
            sub="ops",
            ok=(200,),
        )
        first = picks["picks"][0]["pick_id"]
        async with http.post(
            f"{stack.processes['notifier'].url}/v1/picks/{first}/complete",
            headers=picker_headers,
        ) as response:
            assert response.status == 200
        await eventually(lambda: open_picks_are(len(paid) - 1), timeout=10, what="pick done")

        scraped = await scrape_all(stack)
        notifier_samples = scraped["notifier"]
        assert values(notifier_samples, "lc_notifier_clients", kind="session_ws") == [1.0]
        assert values(notifier_samples, "lc_notifier_clients", kind="picks_ws") == [1.0]
        for name, samples in scraped.items():
            for check in ("redis", "kafka", "consumer"):
                assert values(samples, "lc_readiness_check", check=check) == [1.0], name
        inventory = scraped["inventory"]
        assert values(inventory, "lc_inventory_expiry_backlog") == [0.0]
        assert values(
            inventory, "lc_events_dead_lettered_total", topic=f"{stack.prefix}orders"
        ) == [1.0]
        outcomes = {
            labels["outcome"]: v
            for labels, v in scraped["live_orders"]["lc_live_orders_order_outcomes_total"]
        }
        assert outcomes["reserved"] == STOCK
        assert outcomes["paid"] == len(paid)
        assert outcomes["cancelled"] == 1
    finally:
        await host_ws.close()
        await picks_ws.close()
