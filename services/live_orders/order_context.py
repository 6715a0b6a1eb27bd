"""What placing an order needs to know about its session: the status and one listing,
cached in the process.

Sessions change a handful of times in their life (scheduled -> live -> ended, a listing
added), and a listing never changes once added, while a sale start sends thousands of
order attempts a second at one (session, sku). Every change is announced on the sessions
channel by the process that made it (`SessionService`) and every process's listener drops
its copy at once; a copy older than `MAX_AGE_S` is read again, which bounds how long a
lost announcement can keep an old status. The cost of a stale copy is bounded the same
way: for at most that long, attempts are refused as not on sale that inventory would
have taken, or sent to inventory for a sale that just ended (inventory still decides
every unit, so nothing is oversold either way).
"""

from __future__ import annotations

import time

from services.live_orders.domain import OrderContext
from services.live_orders.session_store import SessionStore

MAX_AGE_S = 1.0
# Unknown ids are cached too (a flood of made-up session ids must not reach Redis), so the
# cache is bounded: past this many entries it starts over.
MAX_ENTRIES = 20_000


class OrderContextCache:
    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._entries: dict[tuple[str, str], OrderContext] = {}
        self._generation = 0

    async def get(self, session_id: str, sku: str) -> OrderContext:
        key = (session_id, sku)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry.read_at < MAX_AGE_S:
            return entry
        generation = self._generation
        status, listing = await self._store.order_context(session_id, sku)
        entry = OrderContext(status, listing, now)
        # A change announced while this read was in flight may not be in it: use it for
        # this request, but do not keep it.
        if generation == self._generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = entry
        return entry

    def invalidate(self, session_id: str) -> None:
        self._generation += 1
        for key in [key for key in self._entries if key[0] == session_id]:
            del self._entries[key]

    def clear(self) -> None:
        """After the listener reconnected: announcements may have been missed."""
        self._generation += 1
        self._entries.clear()
