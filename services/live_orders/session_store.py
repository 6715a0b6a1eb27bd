"""Sessions and their listings in Redis.

A session is a hash (`...:session`) with a `version` bumped by every change, its listings a
hash sku -> JSON (`...:listings`); both under the `{s:<session_id>}` hash tag, so a change
is one Lua call and a read is one pipelined round trip.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, cast

import orjson

from services.common.messages import SessionStatus
from services.common.redis_batch import TickPipeline
from services.common.redis_scripts import LuaScript, RedisClient
from services.live_orders.domain import (
    AddListingOutcome,
    Listing,
    MoveOutcome,
    MoveResult,
    Session,
)
from services.live_orders.redis_keys import RedisKeys

LUA = "services.live_orders.lua"


class SessionStore:
    def __init__(
        self, redis: RedisClient, keys: RedisKeys, pipeline: TickPipeline | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._pipeline = pipeline or TickPipeline(redis)
        self._move = LuaScript(LUA, "session_status.lua")
        self._add_listing = LuaScript(LUA, "add_listing.lua")

    async def create(self, session: Session) -> None:
        # A fresh uuid: nobody else can write this key, so a plain HSET is enough.
        await self._redis.hset(
            self._keys.session(session.session_id),
            mapping={
                "session_id": session.session_id,
                "host_id": session.host_id,
                "title": session.title,
                "status": session.status,
                "created_at": session.created_at,
                "started_at": session.started_at or "",
                "ended_at": session.ended_at or "",
                "version": session.version,
                "pavilion": session.pavilion or "",
            },
        )

    async def get(self, session_id: str) -> Session | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.session(session_id))
            pipe.hgetall(self._keys.listings(session_id))
            raw_session, raw_listings = await pipe.execute()
        if not raw_session:
            return None
        fields = {k.decode(): v.decode() for k, v in raw_session.items()}
        listings = sorted(
            (listing_from_record(value) for value in raw_listings.values()),
            key=lambda item: (item.added_ms, item.sku),
        )
        return Session(
            session_id=fields["session_id"],
            host_id=fields["host_id"],
            title=fields["title"],
            status=cast(SessionStatus, fields["status"]),
            created_at=fields["created_at"],
            started_at=fields.get("started_at") or None,
            ended_at=fields.get("ended_at") or None,
            listings=tuple(listings),
            version=int(fields.get("version", "0")),
            pavilion=fields.get("pavilion") or None,
        )

    async def order_context(self, session_id: str, sku: str) -> tuple[str | None, Listing | None]:
        """The session's status and one listing, in one round trip: what placing an order
        needs, without reading every listing of a busy session."""
        status, raw_listing = await asyncio.gather(
            self._pipeline.command("HGET", self._keys.session(session_id), "status"),
            self._pipeline.command("HGET", self._keys.listings(session_id), sku),
        )
        listing = listing_from_record(raw_listing) if raw_listing else None
        return (status.decode() if status else None), listing

    async def version(self, session_id: str) -> int:
        raw = await self._redis.hget(self._keys.session(session_id), "version")
        return int(raw) if raw else 0

    async def move(
        self, session_id: str, *, target: str, required: str, time_field: str, now: str
    ) -> MoveResult:
        outcome, previous = await self._move(
            self._redis, [self._keys.session(session_id)], [target, required, time_field, now]
        )
        return MoveResult(cast(MoveOutcome, outcome.decode()), previous.decode())

    async def announce_change(self, session_id: str) -> None:
        """Tell every live_orders process to drop its cached copy (order_context.py)."""
        await self._redis.publish(self._keys.sessions_channel, session_id)

    async def add_listing(self, session_id: str, listing: Listing) -> AddListingOutcome:
        outcome = await self._add_listing(
            self._redis,
            [self._keys.session(session_id), self._keys.listings(session_id)],
            [listing.sku, listing_to_record(listing)],
        )
        return cast(AddListingOutcome, outcome.decode())


def listing_to_record(listing: Listing) -> bytes:
    """A listing as stored in the session's listings hash (JSON)."""
    return orjson.dumps({**asdict(listing.to_message()), "added_ms": listing.added_ms})


def listing_from_record(raw: bytes | str) -> Listing:
    record: dict[str, Any] = orjson.loads(raw)
    return Listing(
        sku=record["sku"],
        title=record["title"],
        price_cents=int(record["price_cents"]),
        per_user_limit=int(record["per_user_limit"]),
        sale_starts_at=record.get("sale_starts_at"),
        sale_ends_at=record.get("sale_ends_at"),
        added_ms=int(record.get("added_ms", 0)),
    )
