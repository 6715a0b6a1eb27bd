"""Dropping what grows per order once no event in the log can need it any more.

Order records and buyer units (the per-user limit) of ended holds, and the dedup keys of
the lot journals, are scheduled by the scripts that write them (`*-due` sorted sets, see
stock_store) for the topics' replay window after the last event that needs them: a
replayed order.placed/paid/cancelled or pick.completed always finds its decision or its
journal entry, and answers it unchanged. Every inventory process runs this loop; two
sweeps racing drop each entry once (a due member leaves its sorted set in the same
script that drops it). The journals themselves stay: they are the lots' tamper-evident
record.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.common.background import cancel_requested
from services.common.clock import epoch_ms
from services.inventory.stock_store import StockStore

log = logging.getLogger(__name__)

# Entries dropped per script call: bounds how long one call blocks Redis.
FORGET_BATCH = 500
# Nothing here is urgent: entries are due days after they were written.
INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Forgotten:
    orders: int = 0
    buyers: int = 0
    journal_keys: int = 0


class RetentionSweeper:
    def __init__(
        self, *, store: StockStore, interval_s: float = INTERVAL_S, batch: int = FORGET_BATCH
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._batch = batch

    async def sweep_once(self, now_ms: int | None = None) -> Forgotten:
        """Drop every entry due at `now_ms` (default: now) of every sku."""
        now = epoch_ms() if now_ms is None else now_ms
        orders = buyers = journal_keys = 0
        for sku in await self._store.skus_with_retention():
            while True:
                swept = await self._store.forget_decisions(sku, now_ms=now, limit=self._batch)
                orders += swept.orders_dropped
                buyers += swept.buyers_dropped
                if max(swept.orders_dropped, swept.buyers_dropped) < self._batch:
                    break
            journal_keys += await self._store.forget_journal_dedup(
                sku, now_ms=now, limit=self._batch
            )
        return Forgotten(orders, buyers, journal_keys)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                forgotten = await self.sweep_once()
                if forgotten != Forgotten():
                    log.info(
                        "retention sweep",
                        extra={
                            "orders": forgotten.orders,
                            "buyers": forgotten.buyers,
                            "journal_keys": forgotten.journal_keys,
                        },
                    )
            except Exception:
                if cancel_requested():
                    raise
                log.exception("retention sweep failed; retrying next tick")
