"""Two live_orders apps behind one (imaginary) load balancer: same topics, same Redis
prefix, one consumer group. A request waiting in one app must be answered although the
other app consumed the decision; the sold-out set must reach both within 250 ms."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from deploy.local.stack import free_port
from services.common.redis_scripts import create_redis
from services.common.settings import Settings
from services.common.web_app import METRICS
from services.live_orders.app import create_app
from services.live_orders.redis_keys import RedisKeys
from tests.conftest import RunningApp, auth
from tests.events import event
from tests.integration.live_orders_stack import Decider
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def reserved_by(app: RunningApp) -> float:
    value = app.app[METRICS].registry.get_sample_value(
        "lc_live_orders_order_outcomes_total", {"outcome": "reserved"}
    )
    return value or 0.0


async def test_two_processes_share_decisions_and_the_sold_out_set(
    make_settings: Callable[..., Settings],
    run_app: Callable[..., Any],
    http: aiohttp.ClientSession,
) -> None:
    settings_a = make_settings("live_orders")
    settings_b = settings_a.replace(
        http_port=free_port(), instance_id=f"live_orders-{uuid.uuid4().hex[:6]}"
    )
    app_a = await run_app(create_app, settings_a)
    app_b = await run_app(create_app, settings_b)
    decider = Decider(settings_a)
    await decider.start()
    redis = create_redis(settings_a.redis_url)
    try:
        host = "host-1"
        async with http.post(
            f"{app_a.url}/v1/sessions", json={"title": "Crabs"}, headers=auth("host", host)
        ) as response:
            session_id = (await response.json())["session_id"]
        skus = [f"crab-{i}" for i in range(12)]
        for sku in skus:
            listing = {"sku": sku, "title": "Crab", "price_cents": 100, "per_user_limit": 5}
            async with http.post(
                f"{app_b.url}/v1/sessions/{session_id}/listings",
                json=listing,
                headers=auth("host", host),
            ) as response:
                assert response.status == 201
            decider.stock[sku] = 100
        async with http.post(
            f"{app_a.url}/v1/sessions/{session_id}/start", headers=auth("host", host)
        ) as response:
            assert response.status == 200

        # Both apps share the inventory topic's partitions; SKUs spread over partitions,
        # so some decisions are consumed by B while the request waits in A.
        async def place_on_a() -> bool:
            for sku in skus:
                async with http.post(
                    f"{app_a.url}/v1/sessions/{session_id}/orders?wait=10",
                    json={"sku": sku, "quantity": 1},
                    headers={
                        **auth("buyer", f"buyer-{uuid.uuid4().hex[:6]}"),
                        "Idempotency-Key": "k",
                    },
                ) as response:
                    body = await response.json()
                    assert response.status == 201, body
                    assert body["status"] == "reserved"
            return reserved_by(app_b) > 0

        await eventually(
            place_on_a, timeout=40, interval=0.5, what="B applied a decision A waited for"
        )

        # A long poll in B for an order placed through A, decided by whichever app
        # consumes the partition: B's waiter is woken through Redis pub/sub either way.
        decider.silent_skus.add("crab-0")
        buyer = "buyer-poll"
        async with http.post(
            f"{app_a.url}/v1/sessions/{session_id}/orders?wait=0",
            json={"sku": "crab-0", "quantity": 1},
            headers={**auth("buyer", buyer), "Idempotency-Key": "poll"},
        ) as response:
            assert response.status == 202
            pending = await response.json()

        async def long_poll_on_b() -> dict[str, Any]:
            async with http.get(
                f"{app_b.url}/v1/orders/{pending['order_id']}?wait=8",
                headers=auth("buyer", buyer),
            ) as response:
                assert response.status == 200
                body: dict[str, Any] = await response.json()
                return body

        poll = asyncio.create_task(long_poll_on_b())

        async def b_waiting() -> bool:
            waiters = app_b.app[METRICS].registry.get_sample_value("lc_live_orders_waiters")
            return bool(waiters)

        await eventually(b_waiting, timeout=5, what="the GET waits in B")
        started = time.monotonic()
        confirmed = {
            **{k: pending[k] for k in ("order_id", "session_id", "sku", "quantity")},
            "buyer_id": buyer,
            "total_cents": 100,
            "expires_at": "2030-01-01T00:00:00.000Z",
        }
        await decider.publisher.publish(
            decider.topics.inventory,
            "crab-0",
            event("reservation.confirmed", confirmed, source="test"),
        )
        decided = await poll
        assert decided["status"] == "reserved"
        assert time.monotonic() - started < 3

        # Sold out: whichever app consumed stock.changed, both refuse within 250 ms.
        keys = RedisKeys(settings_a.redis_prefix)
        await decider.publish_stock("crab-5", 0)

        async def marked() -> bool:
            return bool(await redis.sismember(keys.sold_out, "crab-5"))

        await eventually(marked, interval=0.005, what="stock.changed applied")
        marked_at = time.monotonic()
        for app in (app_a, app_b):
            while True:
                async with http.post(
                    f"{app.url}/v1/sessions/{session_id}/orders?wait=5",
                    json={"sku": "crab-5", "quantity": 1},
                    headers={**auth("buyer", f"b-{uuid.uuid4().hex[:6]}"), "Idempotency-Key": "s"},
                ) as response:
                    body = await response.json()
                if response.status == 409 and body["reason"] == "sold_out":
                    break
                assert time.monotonic() - marked_at < 0.25, f"{app.url} did not know in time"
        assert time.monotonic() - marked_at < 0.35
    finally:
        await redis.aclose()
        await decider.stop()
