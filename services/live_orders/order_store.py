"""Orders, idempotency claims and the buyer token bucket in Redis.

An order is a hash under its buyer's `{u:<tag>}` slot (redis_keys.py); every change to it
is one Lua call that checks the state machine, so concurrent requests and redelivered
events cannot move it twice. Placing an order (token bucket, idempotency record, the
order itself) is one call too (`place_order.lua`). Every command goes through the
process's `TickPipeline`: the calls of all requests of one loop tick share a round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import orjson
from redis.crc import key_slot

from services.common.messages import AttemptsTallied
from services.common.redis_batch import TickPipeline
from services.common.redis_scripts import ArgT, KeyT, LuaScript, RedisClient
from services.live_orders.domain import (
    FINAL_STATUSES,
    Intent,
    IntentOutcome,
    IntentResult,
    Order,
    OrderStatus,
    Placement,
    PlaceOutcome,
    TransitionOutcome,
    TransitionRequest,
    TransitionResult,
)
from services.live_orders.order_waiters import OrderUpdate, encode_updates
from services.live_orders.redis_keys import RedisKeys

LUA = "services.live_orders.lua"

# Idempotency records outlive any sensible client retry, then disappear.
IDEMPOTENCY_TTL_S = 24 * 3600
# How long the creator of an order has to publish its event before a retry may take over.
PUBLISH_LEASE_MS = 10_000
# Outcomes applied by one script call at most: Redis runs nothing else meanwhile.
TRANSITIONS_PER_CALL = 200
# How long a final order stays readable (`LC_ORDER_RETENTION_S` overrides): Redis runs
# with noeviction, so orders of past sales must leave on their own.
DEFAULT_RETENTION_S = 30 * 24 * 3600


def as_text(value: bytes | str) -> str:
    """The client returns bytes (no decode_responses); typed stubs say bytes or str."""
    return value.decode() if isinstance(value, bytes) else value


def _record(flat: Sequence[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class OrderStore:
    def __init__(
        self,
        redis: RedisClient,
        keys: RedisKeys,
        retention_s: int = DEFAULT_RETENTION_S,
        pipeline: TickPipeline | None = None,
    ) -> None:
        self._retention_s = retention_s
        self._key_ttl_s = min(IDEMPOTENCY_TTL_S, retention_s)
        self._pipeline = pipeline or TickPipeline(redis)
        self._keys = keys
        self._place = LuaScript(LUA, "place_order.lua")
        self._transitions = LuaScript(LUA, "transition_orders.lua")
        self._claim_intent = LuaScript(LUA, "claim_intent.lua")
        self._tally_refused = LuaScript(LUA, "tally_refused.lua")

    async def place(
        self,
        candidate: Order,
        *,
        idempotency_key: str,
        fingerprint: str,
        burst: int,
        per_s: float,
        now_ms: int,
    ) -> Placement:
        """Claim `idempotency_key` for `candidate` (its order_id must start with its
        buyer's tag) and store it, or find what an earlier request with the key made."""
        buyer_id = candidate.buyer_id
        args: list[ArgT] = [
            burst,
            per_s,
            candidate.order_id,
            fingerprint,
            # Never longer than the order it names may live (a short LC_ORDER_RETENTION_S).
            self._key_ttl_s,
            now_ms,
            PUBLISH_LEASE_MS,
            self._keys.order_key_prefix,
            # An order born rejected (sold out, not on sale) holds nothing and was never
            # paid: it lives as long as the key that names it, not LC_ORDER_RETENTION_S.
            # A sale's refusals outnumber its orders a hundred to one.
            self._key_ttl_s,
            "1" if candidate.status == "rejected" else "0",
        ]
        for name, value in order_to_record(candidate).items():
            if name != "order_id":
                args += (name, value)
        # Into the outbox first, in the same pipeline: an order that exists is in the
        # outbox until it is published (order_outbox.py), whenever the process dies.
        reply = await self._pipeline.script(
            self._place,
            [
                self._keys.bucket(buyer_id),
                self._keys.idempotency(buyer_id, idempotency_key),
                self._keys.order(candidate.order_id),
            ],
            args,
            before=("ZADD", self._keys.outbox, now_ms, candidate.order_id),
        )
        outcome = cast(PlaceOutcome, reply[0].decode())
        # Candidate ids are random per request, so a stored order with the candidate's id
        # was stored by this very call: by this attempt, or by an earlier attempt of the
        # same pipeline flush whose reply was lost (a timeout or a dropped connection,
        # retried by TickPipeline), which answers "replay" and holds the lease.
        ours = outcome in ("claimed", "replay") and reply[1].decode() == candidate.order_id
        if not ours:
            # The candidate was not stored (a replayed key, a limit): nothing to publish.
            await self._pipeline.command("ZREM", self._keys.outbox, candidate.order_id)
        if outcome == "limited":
            return Placement(outcome, retry_after_ms=int(reply[1]))
        order_id = reply[1].decode()
        if outcome == "mismatch":
            return Placement(outcome, order_id=order_id)
        created, publish = bool(reply[2]) or ours, bool(reply[3]) or ours
        # Created by this call from the candidate: nothing to read back.
        order = order_from_record(_record(reply[4:])) if len(reply) > 4 else candidate
        return Placement(outcome, order_id, order, created, publish)

    async def mark_published(self, order_ids: Sequence[str], *, flag: bool = True) -> None:
        """Their creation events were acknowledged: out of the outbox, and flagged (what a
        cancel of a pending order and a replayed key look at; an order born rejected needs
        no flag, and leaving it out saves a command on the sold-out path)."""
        await asyncio.gather(
            *(
                self._pipeline.command("HSET", self._keys.order(order_id), "published", "1")
                for order_id in (order_ids if flag else ())
            ),
            self._pipeline.command("ZREM", self._keys.outbox, *order_ids),
        )

    def mark_published_soon(self, order_id: str) -> None:
        """`mark_published` for one order, with the next round trip rather than one of its
        own, and nobody waiting: the buyer waits for inventory's decision, not for this.
        Until it lands the order looks as it did before the acknowledgement (a cancel is
        answered "retry", the outbox sweep may publish it again: harmless); if it never
        lands, the outcome marks the order published and the sweep drops the id."""
        self._pipeline.defer("HSET", self._keys.order(order_id), "published", "1")
        self._pipeline.defer("ZREM", self._keys.outbox, order_id)

    async def outbox_due(self, placed_before_ms: int, limit: int) -> list[str]:
        """Ids in the outbox since before `placed_before_ms`, oldest first."""
        raw = await self._pipeline.command(
            "ZRANGEBYSCORE", self._keys.outbox, "-inf", placed_before_ms, "LIMIT", 0, limit
        )
        return [as_text(order_id) for order_id in raw]

    async def outbox_remove(self, order_ids: Sequence[str]) -> None:
        await self._pipeline.command("ZREM", self._keys.outbox, *order_ids)

    async def outbox_postpone(self, order_ids: Sequence[str], now_ms: int) -> None:
        """Only those still in the outbox (XX): a concurrent mark_published wins."""
        pairs: list[str | int] = []
        for order_id in order_ids:
            pairs.extend((now_ms, order_id))
        await self._pipeline.command("ZADD", self._keys.outbox, "XX", *pairs)

    async def tally_refused(
        self, refused: Sequence[Order], *, tally_id: str, now_ms: int, now: str
    ) -> list[AttemptsTallied]:
        """Count orders refused here into one tally per session (`tally_id-<n>`), each
        order once ever: the ones still in the outbox leave it, atomically. The tallies
        wait in Redis until `forget_tallies` (after they were published)."""
        args: list[ArgT] = [tally_id, now_ms, now]
        for order in refused:
            args.extend((order.order_id, order.session_id, order.reason or ""))
        made = await self._pipeline.script(
            self._tally_refused,
            [self._keys.outbox, self._keys.tallies, self._keys.tallies_due],
            args,
        )
        return [AttemptsTallied.from_data(orjson.loads(record)) for record in made]

    async def tallies_due(self, made_before_ms: int, limit: int) -> list[AttemptsTallied]:
        """Tallies not yet known to be published, made before `made_before_ms`, oldest first."""
        ids = await self._pipeline.command(
            "ZRANGEBYSCORE", self._keys.tallies_due, "-inf", made_before_ms, "LIMIT", 0, limit
        )
        if not ids:
            return []
        records = await self._pipeline.command("HMGET", self._keys.tallies, *ids)
        return [
            AttemptsTallied.from_data(orjson.loads(record))
            for record in records
            if record is not None
        ]

    async def forget_tallies(self, tally_ids: Sequence[str]) -> None:
        """They were published: out of Redis."""
        await asyncio.gather(
            self._pipeline.command("HDEL", self._keys.tallies, *tally_ids),
            self._pipeline.command("ZREM", self._keys.tallies_due, *tally_ids),
        )

    async def release_publish_lease(self, order_id: str) -> None:
        """The publish failed: let the next retry of the request publish at once."""
        await self._pipeline.command("HSET", self._keys.order(order_id), "lease_until", "0")

    async def get(self, order_id: str) -> Order | None:
        raw = await self._pipeline.command("HGETALL", self._keys.order(order_id))
        if not raw:
            return None
        # RESP3 (redis-py's default) answers a map; RESP2 a flat list.
        if isinstance(raw, dict):
            return order_from_record({as_text(k): as_text(v) for k, v in raw.items()})
        return order_from_record(_record(raw))

    async def transition(
        self,
        *,
        order_id: str,
        target: str,
        allowed_from: Iterable[str],
        now: str,
        fields: dict[str, str],
    ) -> TransitionResult:
        (result,) = await self.transition_many(
            [TransitionRequest(order_id, target, allowed_from, fields)], now=now
        )
        return result

    def announce(self, updates: Sequence[OrderUpdate], source: str) -> None:
        """Tell every process's waiters the new states of these orders (one message), with
        the next round trip (at most DEFER_MAX_S later) rather than one of its own: the
        states are stored, and this process's own waiters have them already."""
        self._pipeline.defer(
            "PUBLISH", self._keys.order_updates_channel, encode_updates(updates, source)
        )

    async def transition_many(
        self, requests: Sequence[TransitionRequest], *, now: str
    ) -> list[TransitionResult]:
        """Apply outcomes to orders (in order: one named twice sees the first's result):
        one script call for all of them, or per slot on a cluster, in one round trip."""
        calls: list[tuple[list[int], asyncio.Future[Any]]] = []
        for group in self._call_groups(requests):
            keys: list[KeyT] = []
            args: list[ArgT] = [now]
            for index in group:
                request = requests[index]
                keys.append(self._keys.order(request.order_id))
                retention = self._retention_s if request.target in FINAL_STATUSES else 0
                args += (request.target, ",".join(request.allowed_from), retention)
                args.append(len(request.fields))
                for name, value in request.fields.items():
                    args += (name, value)
            calls.append((group, self._pipeline.script(self._transitions, keys, args)))
        results: list[TransitionResult | None] = [None] * len(requests)
        replies = await asyncio.gather(*(future for _, future in calls))
        for (group, _), flat in zip(calls, replies, strict=True):
            for n, index in enumerate(group):
                outcome, previous, placed_ms = flat[3 * n : 3 * n + 3]
                results[index] = TransitionResult(
                    cast(TransitionOutcome, outcome.decode()), previous.decode(), int(placed_ms)
                )
        return cast(list[TransitionResult], results)

    def _call_groups(self, requests: Sequence[TransitionRequest]) -> list[list[int]]:
        """The requests' indexes by script call: at most TRANSITIONS_PER_CALL each, and on
        a cluster only orders of one slot (a script's keys must share its node)."""
        if not self._pipeline.cluster:
            indexes = list(range(len(requests)))
            return [
                indexes[i : i + TRANSITIONS_PER_CALL]
                for i in range(0, len(indexes), TRANSITIONS_PER_CALL)
            ]
        by_slot: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            slot = key_slot(self._keys.order(request.order_id).encode())
            by_slot.setdefault(slot, []).append(index)
        return [
            group[i : i + TRANSITIONS_PER_CALL]
            for group in by_slot.values()
            for i in range(0, len(group), TRANSITIONS_PER_CALL)
        ]

    async def claim_intent(
        self,
        order_id: str,
        *,
        intent: Literal["pay", "cancel"],
        allowed_from: Iterable[str],
        payment_ref: str = "",
        amount_cents: int | None = None,
    ) -> IntentResult:
        outcome, status, held, ref = await self._pipeline.script(
            self._claim_intent,
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


# ------------------------------------------------------------------- the record codec


def order_to_record(order: Order) -> dict[str, str]:
    """The fields stored when the order is created (Redis hash, strings only)."""
    record = {
        "order_id": order.order_id,
        "status": order.status,
        "session_id": order.session_id,
        "sku": order.sku,
        "buyer_id": order.buyer_id,
        "quantity": str(order.quantity),
        "unit_price_cents": str(order.unit_price_cents),
        "total_cents": str(order.total_cents),
        "per_user_limit": str(order.per_user_limit),
        "placed_at": order.placed_at,
        "placed_ms": str(order.placed_ms),
        "updated_at": order.updated_at,
    }
    if order.reason is not None:
        record["reason"] = order.reason
    return record


def order_from_record(record: dict[str, str]) -> Order:
    def optional(name: str) -> str | None:
        value = record.get(name)
        return value if value else None

    intent = optional("intent")
    return Order(
        order_id=record["order_id"],
        status=cast(OrderStatus, record["status"]),
        session_id=record["session_id"],
        sku=record["sku"],
        buyer_id=record["buyer_id"],
        quantity=int(record["quantity"]),
        unit_price_cents=int(record["unit_price_cents"]),
        total_cents=int(record["total_cents"]),
        per_user_limit=int(record["per_user_limit"]),
        placed_at=record["placed_at"],
        placed_ms=int(record.get("placed_ms") or 0),
        updated_at=record.get("updated_at") or record["placed_at"],
        expires_at=optional("expires_at"),
        reason=optional("reason"),
        payment_ref=optional("payment_ref"),
        intent=cast(Intent, intent) if intent in ("pay", "cancel") else None,
        published=record.get("published") == "1",
    )
