"""Orders, idempotency claims and the buyer token bucket in Redis.

An order is a hash under `{o:<order_id>}`; every change to it is one Lua call that checks
the state machine, so concurrent requests and redelivered events cannot move it twice.
The buyer's token bucket and idempotency records live under `{b:<buyer>}` and are decided
together in one call (`claim_order.lua`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from redis.asyncio import Redis

from services.common.redis_scripts import LuaScript
from services.live_orders.domain import FINAL_STATUSES, Order
from services.live_orders.redis_keys import RedisKeys

LUA = "services.live_orders.lua"

# Idempotency records outlive any sensible client retry, then disappear.
IDEMPOTENCY_TTL_S = 24 * 3600
# How long the creator of an order has to publish its event before a retry may take over.
PUBLISH_LEASE_MS = 10_000
# How long a final order stays readable (`LC_ORDER_RETENTION_S` overrides): Redis runs
# with noeviction, so orders of past sales must leave on their own.
DEFAULT_RETENTION_S = 30 * 24 * 3600

ClaimOutcome = Literal["claimed", "replay", "mismatch", "limited"]
TransitionOutcome = Literal["applied", "same", "stale", "missing"]
IntentOutcome = Literal["claimed", "held", "not_allowed", "missing"]


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    order_id: str = ""
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Created:
    order: Order
    created: bool  # this call stored the order
    publish: bool  # this caller holds the lease to publish the order's creation event


@dataclass(frozen=True, slots=True)
class TransitionResult:
    outcome: TransitionOutcome
    previous: str
    placed_ms: int


@dataclass(frozen=True, slots=True)
class IntentResult:
    outcome: IntentOutcome
    status: str
    intent: str
    payment_ref: str


def as_text(value: bytes | str) -> str:
    """The client returns bytes (no decode_responses); typed stubs say bytes or str."""
    return value.decode() if isinstance(value, bytes) else value


def _record(flat: Sequence[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class OrderStore:
    def __init__(
        self, redis: Redis, keys: RedisKeys, retention_s: int = DEFAULT_RETENTION_S
    ) -> None:
        self._retention_s = retention_s
        self._redis = redis
        self._keys = keys
        self._claim = LuaScript(LUA, "claim_order.lua")
        self._create = LuaScript(LUA, "create_order.lua")
        self._transition = LuaScript(LUA, "transition_order.lua")
        self._claim_intent = LuaScript(LUA, "claim_intent.lua")

    async def claim(
        self,
        *,
        buyer_id: str,
        idempotency_key: str,
        fingerprint: str,
        order_id: str,
        burst: int,
        per_s: float,
    ) -> Claim:
        outcome, value = await self._claim(
            self._redis,
            [self._keys.bucket(buyer_id), self._keys.idempotency(buyer_id, idempotency_key)],
            [burst, per_s, order_id, fingerprint, IDEMPOTENCY_TTL_S],
        )
        kind = cast(ClaimOutcome, outcome.decode())
        if kind == "limited":
            return Claim(kind, retry_after_ms=int(value))
        return Claim(kind, order_id=value.decode())

    async def create(self, order: Order, now_ms: int) -> Created:
        fields: list[str] = []
        for name, value in order.to_record().items():
            fields.extend((name, value))
        created, publish, *stored = await self._create(
            self._redis,
            [self._keys.order(order.order_id)],
            [now_ms, PUBLISH_LEASE_MS, *fields],
        )
        result = Created(Order.from_record(_record(stored)), bool(created), bool(publish))
        if result.created and result.order.final:
            await self._expire(order.order_id)
        return result

    async def _expire(self, order_id: str) -> None:
        """A final order is kept `retention_s` more, then Redis drops it. Best effort: a
        missed EXPIRE only keeps one order longer."""
        await self._redis.expire(self._keys.order(order_id), self._retention_s)

    async def mark_published(self, order_id: str) -> None:
        await self._redis.hset(self._keys.order(order_id), "published", "1")

    async def release_publish_lease(self, order_id: str) -> None:
        """The publish failed: let the next retry of the request publish at once."""
        await self._redis.hset(self._keys.order(order_id), "lease_until", "0")

    async def get(self, order_id: str) -> Order | None:
        raw = await self._redis.hgetall(self._keys.order(order_id))
        if not raw:
            return None
        return Order.from_record({as_text(k): as_text(v) for k, v in raw.items()})

    async def transition(
        self,
        *,
        order_id: str,
        target: str,
        allowed_from: Iterable[str],
        now: str,
        fields: dict[str, str],
    ) -> TransitionResult:
        extra: list[str] = []
        for name, value in fields.items():
            extra.extend((name, value))
        outcome, previous, placed_ms = await self._transition(
            self._redis,
            [self._keys.order(order_id)],
            [
                self._keys.order_updates_channel,
                order_id,
                target,
                ",".join(allowed_from),
                now,
                *extra,
            ],
        )
        result = TransitionResult(
            cast(TransitionOutcome, outcome.decode()), previous.decode(), int(placed_ms)
        )
        if result.outcome == "applied" and target in FINAL_STATUSES:
            await self._expire(order_id)
        return result

    async def claim_intent(
        self,
        order_id: str,
        *,
        intent: Literal["pay", "cancel"],
        allowed_from: Iterable[str],
        payment_ref: str = "",
        amount_cents: int | None = None,
    ) -> IntentResult:
        outcome, status, held, ref = await self._claim_intent(
            self._redis,
            [self._keys.order(order_id)],
            [
                intent,
                ",".join(allowed_from),
                payment_ref,
                "" if amount_cents is None else str(amount_cents),
            ],
        )
        return IntentResult(
            cast(IntentOutcome, outcome.decode()), status.decode(), held.decode(), ref.decode()
        )
