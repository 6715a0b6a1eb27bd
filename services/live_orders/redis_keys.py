"""Every Redis key and pub/sub channel live_orders uses, in one place.

All start with `settings.redis_prefix` then `lo:`. Keys one Lua call touches together share
a hash tag, so each call stays in one Redis Cluster slot: `{s:<session_id>}` for a session
and its listings, `{b:<buyer>}` for a buyer's token bucket and idempotency records,
`{o:<order_id>}` for an order, `{lo:stock}` for the sold-out set and its offsets and
versions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    def session(self, session_id: str) -> str:
        return f"{self.prefix}lo:{{s:{session_id}}}:session"

    def listings(self, session_id: str) -> str:
        return f"{self.prefix}lo:{{s:{session_id}}}:listings"

    def bucket(self, buyer_id: str) -> str:
        return f"{self.prefix}lo:{{b:{buyer_id}}}:bucket"

    def idempotency(self, buyer_id: str, key: str) -> str:
        return f"{self.prefix}lo:{{b:{buyer_id}}}:idem:{key}"

    def order(self, order_id: str) -> str:
        return f"{self.prefix}lo:{{o:{order_id}}}:order"

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
