"""Every Redis key and pub/sub channel live_orders uses, in one place.

All start with `settings.redis_prefix` then `lo:`. Keys one Lua call touches together share
a hash tag, so each call stays in one Redis Cluster slot: `{s:<session_id>}` for a session
and its listings, `{lo:stock}` for the sold-out set and its offsets and versions, and
`{u:<tag>}` for a buyer's token bucket, idempotency records and orders.

The buyer tag is 4 hex digits of a hash of the buyer id, and every order id starts with
its buyer's tag (`new_order_id`): placing an order (rate limit, idempotency claim, order
record) is then one Lua call in one slot, and an order's key still follows from its id
alone (a payment or an admin does not know the buyer). 65,536 tags spread over Redis
Cluster's 16,384 slots.
"""

from __future__ import annotations

import functools
import os
import zlib
from dataclasses import dataclass

TAG_LENGTH = 4


# Cached: a placement needs it three times (bucket, idempotency key, order id), and a
# sale's buyers come back again and again; 65,536 entries are a few MiB at most.
@functools.lru_cache(maxsize=65_536)
def buyer_tag(buyer_id: str) -> str:
    return f"{zlib.crc32(buyer_id.encode()) & 0xFFFF:04x}"


class _RandomPool:
    """os.urandom read 4 KiB at a time: a getrandom() system call per order was 1% of a
    sold-out answer. The bytes are the kernel's CSPRNG all the same."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._bytes = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._bytes):
            self._bytes, self._at = os.urandom(self._size), 0
        start, self._at = self._at, self._at + n
        return self._bytes[start : self._at]


_random = _RandomPool()


def new_order_id(buyer_id: str) -> str:
    """32 hex digits like a uuid4's hex, the first 4 naming the buyer's slot tag, the other
    28 random (112 bits, unguessable)."""
    return buyer_tag(buyer_id) + _random.take(14).hex()


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    def session(self, session_id: str) -> str:
        return f"{self.prefix}lo:{{s:{session_id}}}:session"

    def listings(self, session_id: str) -> str:
        return f"{self.prefix}lo:{{s:{session_id}}}:listings"

    def bucket(self, buyer_id: str) -> str:
        return f"{self.prefix}lo:{{u:{buyer_tag(buyer_id)}}}:tokens:{buyer_id}"

    def idempotency(self, buyer_id: str, key: str) -> str:
        return f"{self.prefix}lo:{{u:{buyer_tag(buyer_id)}}}:idem:{buyer_id}:{key}"

    def order(self, order_id: str) -> str:
        return f"{self.order_key_prefix}{order_id[:TAG_LENGTH]}}}:order:{order_id}"

    @property
    def order_key_prefix(self) -> str:
        """What `order(id)` puts before `<tag>}:order:<id>`; a Lua script that learns an
        order id from an idempotency record builds the order's key from it."""
        return f"{self.prefix}lo:{{u:"

    @property
    def outbox(self) -> str:
        """Sorted set of order ids not yet known to be published, by time (order_outbox.py)."""
        return f"{self.prefix}lo:{{lo:outbox}}:orders"

    @property
    def tallies(self) -> str:
        """Hash tally_id -> JSON of the attempts.tallied not yet published (order_outbox.py);
        in the outbox's slot, so an order leaves the outbox and is counted in one step."""
        return f"{self.prefix}lo:{{lo:outbox}}:tallies"

    @property
    def tallies_due(self) -> str:
        """Sorted set tally_id -> epoch ms it was made, for the outbox sweep."""
        return f"{self.prefix}lo:{{lo:outbox}}:tallies-due"

    @property
    def sessions_channel(self) -> str:
        """session_id of every session change, so each process drops its cached copy."""
        return f"{self.prefix}lo:sessions"

    @property
    def sold_out(self) -> str:
        return f"{self.prefix}lo:{{lo:stock}}:sold-out"

    @property
    def stock_seen(self) -> str:
        return f"{self.prefix}lo:{{lo:stock}}:seen"

    @property
    def stock_versions(self) -> str:
        """Hash sku -> version of the last stock.changed applied to the sold-out set."""
        return f"{self.prefix}lo:{{lo:stock}}:versions"

    @property
    def order_updates_channel(self) -> str:
        return f"{self.prefix}lo:order-updates"

    @property
    def stock_channel(self) -> str:
        return f"{self.prefix}lo:stock"
