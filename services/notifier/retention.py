"""Dropping what grows per pick and per paid order once its retention ended.

Redis 7.0 has no per-field expiry, so what lives in a shared hash or sorted set is
scheduled in a companion sorted set (member -> epoch ms it may go) by the script that
writes it, and this loop drops it (common/lua/forget_due.lua, one slot: every notifier key
carries `{nt}`):

- a completed pick leaves its warehouse's `done` list after LC_PICK_RETENTION_S
  (`picks:<wh>:done-due`); its task hash, trace code and the order's pick set carry a
  plain EXPIRE of LC_TRACE_RETENTION_S set at completion (complete_pick.lua);
- `order-buyers` (who may read a paid order's trace) goes after LC_TRACE_RETENTION_S
  (`order-buyers-due`, written by the projection step of reservation.committed).

Every notifier process runs it; two racing sweeps drop each member once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from services.common.background import cancel_requested
from services.common.clock import epoch_ms
from services.notifier.pick_store import PickStore

log = logging.getLogger(__name__)

# Nothing here is urgent: entries are due days after they were written.
INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Forgotten:
    done_picks: int = 0
    order_buyers: int = 0


class RetentionSweep:
    def __init__(
        self,
        picks: PickStore,
        interval_s: float = INTERVAL_S,
        clock_ms: Callable[[], int] = epoch_ms,
    ) -> None:
        self._picks = picks
        self._interval_s = interval_s
        self._clock_ms = clock_ms

    async def sweep_once(self, now_ms: int | None = None) -> Forgotten:
        now = self._clock_ms() if now_ms is None else now_ms
        return Forgotten(
            done_picks=await self._picks.forget_done(now),
            order_buyers=await self._picks.forget_order_buyers(now),
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                forgotten = await self.sweep_once()
                if forgotten != Forgotten():
                    log.info(
                        "retention sweep",
                        extra={
                            "done_picks": forgotten.done_picks,
                            "order_buyers": forgotten.order_buyers,
                        },
                    )
            except Exception:
                if cancel_requested():
                    raise
                log.warning("retention sweep failed; next one in a while", exc_info=True)
