"""The sold-out fast path: which SKUs are known to have no stock left.

The truth is in Redis (`{lo:stock}:sold-out`, written by whichever live_orders process
consumed the `stock.changed` event). Every process keeps a local copy so that refusing an
attempt costs no round trip: changes reach it over pub/sub (`lo:stock`) within
milliseconds, and a refresh from Redis every second repairs anything the pub/sub missed.
A stale "sold out" only refuses attempts inventory would have refused too, or (for at most
a second after a restock) a few it would have accepted; it never sells anything twice.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.background import cancel_requested
from services.common.redis_batch import TickPipeline
from services.common.redis_scripts import LuaScript, RedisClient
from services.live_orders.order_store import as_text
from services.live_orders.redis_keys import RedisKeys

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 1.0


class SoldOutSkus:
    def __init__(
        self, redis: RedisClient, keys: RedisKeys, pipeline: TickPipeline | None = None
    ) -> None:
        self._redis = redis
        self._pipeline = pipeline or TickPipeline(redis)
        self._keys = keys
        self._apply = LuaScript("services.live_orders.lua", "apply_stock.lua")
        self._local: set[str] = set()
        # Bumped by every pub/sub update, so a refresh that read Redis before an update
        # arrived does not overwrite the newer state with its older copy.
        self._generation = 0

    def __contains__(self, sku: object) -> bool:
        return sku in self._local

    def apply_local(self, sku: str, sold_out: bool) -> None:
        self._generation += 1
        if sold_out:
            self._local.add(sku)
        else:
            self._local.discard(sku)

    async def record(
        self,
        sku: str,
        *,
        sold_out: bool,
        partition: int,
        offset: int,
        version: int | None = None,
    ) -> bool:
        """Record one stock.changed (consumer side) and broadcast it; False if a newer
        state of the SKU was applied already. `version` is the event's (None for events
        from before it existed); apply_stock.lua says how the two kinds are ordered."""
        applied = await self._pipeline.script(
            self._apply,
            [self._keys.sold_out, self._keys.stock_seen, self._keys.stock_versions],
            [
                self._keys.stock_channel,
                sku,
                partition,
                offset,
                "1" if sold_out else "0",
                "" if version is None else version,
            ],
        )
        return bool(applied)

    async def refresh(self) -> None:
        generation = self._generation
        members = await self._redis.smembers(self._keys.sold_out)
        if generation == self._generation:
            self._local = {as_text(member) for member in members}

    async def refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                if cancel_requested():
                    raise
                log.warning("sold-out refresh failed; keeping the last known set", exc_info=True)
            await asyncio.sleep(REFRESH_INTERVAL_S)
