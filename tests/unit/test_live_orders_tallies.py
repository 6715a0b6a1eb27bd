"""The outbox's background counter: a lone refusal is counted at once, a burst's refusals
gather for TALLY_GAP_S between tallies (each tally is a Lua call, a produce request and a
fetch of every consumer of the orders topic)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from services.common.messages import AttemptsTallied
from services.live_orders.domain import Order
from services.live_orders.metrics import LiveOrdersMetrics
from services.live_orders.order_outbox import TALLY_GAP_S, OrderOutbox
from tests.live_orders_support import an_order
from tests.unit.fakes import FakePublisher

DEADLINE_S = 5.0


class TallyRecords:
    """The part of OutboxRecords the background counter uses: every order is counted (the
    exactly-once rule is tally_refused.lua's, tested on a real Redis)."""

    def __init__(self) -> None:
        self.tallied: list[list[str]] = []

    async def tally_refused(
        self, refused: Sequence[Order], *, tally_id: str, now_ms: int, now: str
    ) -> list[AttemptsTallied]:
        self.tallied.append([order.order_id for order in refused])
        return [
            AttemptsTallied(
                tally_id=f"{tally_id}-1",
                session_id="s1",
                sold_out=len(refused),
                not_on_sale=0,
                tallied_at=now,
            )
        ]

    async def forget_tallies(self, tally_ids: Sequence[str]) -> None:
        pass

    async def outbox_due(self, placed_before_ms: int, limit: int) -> list[str]:
        return []

    async def tallies_due(self, made_before_ms: int, limit: int) -> list[AttemptsTallied]:
        return []


async def counted(records: TallyRecords, total: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while sum(map(len, records.tallied)) < total:
        assert loop.time() < deadline, f"counted {records.tallied}, expected {total}"
        await asyncio.sleep(0.001)


async def test_a_burst_of_refusals_is_counted_in_few_tallies_a_lone_one_at_once() -> None:
    records = TallyRecords()
    publisher = FakePublisher()
    outbox = OrderOutbox(
        store=records,  # type: ignore[arg-type]
        publisher=publisher,
        topic="orders",
        source="test",
        metrics=LiveOrdersMetrics.create(CollectorRegistry()),
    )
    runner = asyncio.create_task(outbox.run())
    try:
        outbox.tally_soon(an_order("lone", "rejected"))
        await counted(records, 1)
        assert records.tallied == [["lone"]]
        # 20 refusals, one a millisecond (a tally of its own each without the gap).
        burst = [an_order(f"o{n}", "rejected") for n in range(20)]
        started = asyncio.get_running_loop().time()
        for order in burst:
            outbox.tally_soon(order)
            await asyncio.sleep(0.001)
        took_s = asyncio.get_running_loop().time() - started
        await counted(records, 21)
        tallies = records.tallied[1:]
        assert [order_id for tally in tallies for order_id in tally] == [
            order.order_id for order in burst
        ]
        # At most one tally per TALLY_GAP_S while they came (and the one that waited).
        assert len(tallies) <= took_s / TALLY_GAP_S + 2 < len(burst)
        assert len(publisher.messages(AttemptsTallied)) == len(records.tallied)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
