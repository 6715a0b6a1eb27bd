"""The Kafka broker is SIGKILLed (no clean shutdown: nothing flushed, no leadership handed
over, connections reset) in the middle of a burst, stays away 10 s, and comes back on the
same data.

Buyers keep pressing during the outage and retry a 5xx with the same Idempotency-Key, as
clients do. Afterwards every order reached one final state, each buyer's key names one
order, the stock is conserved, and the log, inventory's Redis and live_orders' orders agree.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bench.flash_sale import Answer, SaleClient
from services.common.settings import Settings
from tests.chaos.test_broker_restart import Broker
from tests.reconciling import reconciled
from tests.waiting import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]

UNITS = 150
BUYERS = 300
OUTAGE_S = 10.0


class KillableBroker(Broker):
    def kill(self) -> int:
        """SIGKILL; the exit status (-9)."""
        proc = self._started.proc
        proc.kill()
        return int(proc.wait(10))


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[KillableBroker]:
    """Requested before `order_path`, so the apps stop before the broker does."""
    kafka = KillableBroker(tmp_path)
    await kafka.start()
    yield kafka
    await kafka.stop()


async def test_a_sigkilled_broker_back_after_10_s_loses_and_duplicates_nothing(
    broker: KillableBroker,
    order_path: Callable[..., Awaitable[SaleClient]],
    make_settings: Callable[..., Settings],
) -> None:
    kafka = {"kafka_bootstrap": broker.bootstrap}
    client = await order_path(inventory=kafka, live_orders=kafka)
    sku = "crab-broker-kill"
    session_id = await client.start_sale(
        sku, units=UNITS, host_id="host-bk", price_cents=900, per_user_limit=1
    )
    started = time.monotonic()
    done = 0
    killed = asyncio.Event()
    retries: Counter[int] = Counter()

    async def outage() -> int:
        await killed.wait()
        status = await asyncio.to_thread(broker.kill)
        await asyncio.sleep(OUTAGE_S)  # the fault itself: the broker stays away this long
        await broker.start()
        return status

    async def buy(n: int) -> Answer:
        """Buyer n presses n * 15 ms into the sale (so presses span the outage), retries
        a 5xx with the same key, and follows a 202 until the order is decided."""
        nonlocal done
        await asyncio.sleep(n * 0.015)
        deadline = time.monotonic() + 90
        while True:
            answer = await client.place_order(
                buyer=f"b{n}", session_id=session_id, sku=sku, quantity=1, key=f"k{n}", wait=2
            )
            if answer.status < 500 or time.monotonic() > deadline:
                break
            retries[answer.status] += 1
            await asyncio.sleep(0.2)  # a client's backoff before its retry
        while answer.status == 202:
            follow = await client.order(buyer=f"b{n}", order_id=answer.body["order_id"], wait=5)
            if follow.body["status"] != "pending":
                answer = follow
        done += 1
        if done == BUYERS // 5:
            killed.set()
        return answer

    fault = asyncio.create_task(outage())
    answers = await asyncio.gather(*(buy(n) for n in range(BUYERS)))
    exit_status = await fault
    assert exit_status == -9
    assert retries, "no request met the outage"
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 201, 409}, statuses

    # Each key names one order, its buyer's; none is left pending.
    orders: dict[int, dict[str, Any]] = {}
    for n, answer in enumerate(answers):
        again = await client.place_order(
            buyer=f"b{n}", session_id=session_id, sku=sku, quantity=1, key=f"k{n}", wait=0
        )
        assert again.body["order_id"] == answer.body["order_id"], n
        orders[n] = again.body

    async def none_pending() -> bool:
        for n, body in orders.items():
            if body["status"] == "pending":
                orders[n] = (await client.order(buyer=f"b{n}", order_id=body["order_id"])).body
        return all(body["status"] != "pending" for body in orders.values())

    await eventually(none_pending, timeout=60, interval=0.5, what="every order decided")
    final = Counter(body["status"] for body in orders.values())
    stock = await client.sku(sku)
    print(
        f"\nbroker SIGKILL: 5xx retried {dict(retries)}; stock "
        f"{ {k: stock[k] for k in ('received', 'available', 'reserved', 'sold')} }; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert final["reserved"] == UNITS == stock["reserved"]
    assert (stock["available"], stock["sold"]) == (0, 0)
    assert set(final) <= {"reserved", "rejected"}
    report = await reconciled(
        make_settings("inventory", **kafka),
        label="broker SIGKILL for 10 s",
        accepted=len(orders),
        final_states=[body["status"] for body in orders.values()],
    )
    assert report.differences == []
