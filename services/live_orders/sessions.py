"""Session use cases: create, start, end, add listings; every change published whole as
`session.updated` (topic `sessions`, compacted, key session_id)."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from services.common.auth import Principal
from services.common.clock import epoch_ms, now_rfc3339
from services.common.events import Envelope, Publisher
from services.live_orders.domain import (
    SESSION_MOVES,
    AddListingOutcome,
    Conflict,
    Listing,
    MoveResult,
    NotFound,
    Session,
    new_listing,
)

# How often a publisher re-sends when it finds the session changed under it (see _publish).
MAX_REPUBLISH = 5


class SessionRecords(Protocol):
    """What the use cases need of the session store (SessionStore in Redis)."""

    async def create(self, session: Session) -> None: ...

    async def get(self, session_id: str) -> Session | None: ...

    async def version(self, session_id: str) -> int: ...

    async def move(
        self, session_id: str, *, target: str, required: str, time_field: str, now: str
    ) -> MoveResult: ...

    async def add_listing(self, session_id: str, listing: Listing) -> AddListingOutcome: ...

    async def announce_change(self, session_id: str) -> None: ...


class ContextCache(Protocol):
    """This process's copies of session contexts (OrderContextCache)."""

    def invalidate(self, session_id: str) -> None: ...


class SessionService:
    def __init__(
        self,
        store: SessionRecords,
        publisher: Publisher,
        topic: str,
        source: str,
        contexts: ContextCache,
    ) -> None:
        self._store = store
        self._contexts = contexts
        self._publisher = publisher
        self._topic = topic
        self._source = source

    async def create(self, host_id: str, title: str, pavilion: str | None = None) -> Session:
        session = Session(
            session_id=uuid.uuid4().hex,
            host_id=host_id,
            title=title,
            status="scheduled",
            created_at=now_rfc3339(),
            started_at=None,
            ended_at=None,
            listings=(),
            version=1,
            pavilion=pavilion,
        )
        await self._store.create(session)
        return await self._publish(session.session_id)

    async def get(self, session_id: str) -> Session:
        session = await self._store.get(session_id)
        if session is None:
            raise NotFound("no such session")
        return session

    async def get_managed(self, session_id: str, who: Principal) -> Session:
        """The session, if `who` may manage it: its host or an admin. Anyone else is told
        it does not exist."""
        session = await self.get(session_id)
        if not who.is_admin and session.host_id != who.sub:
            raise NotFound("no such session")
        return session

    async def move(self, session_id: str, action: str, who: Principal) -> Session:
        await self.get_managed(session_id, who)
        required, target, time_field = SESSION_MOVES[action]
        result = await self._store.move(
            session_id, target=target, required=required, time_field=time_field, now=now_rfc3339()
        )
        if result.outcome == "missing":
            raise NotFound("no such session")
        if result.outcome == "conflict":
            raise Conflict(f"cannot {action} a session that is {result.previous}")
        if result.outcome == "same":
            # Repeating start/end is harmless: answer the session as it is.
            return await self.get(session_id)
        await self._changed(session_id)
        return await self._publish(session_id)

    async def add_listing(self, session_id: str, body: dict[str, Any], who: Principal) -> Listing:
        await self.get_managed(session_id, who)
        listing = new_listing(body, added_ms=epoch_ms())
        outcome = await self._store.add_listing(session_id, listing)
        if outcome == "missing":
            raise NotFound("no such session")
        if outcome == "ended":
            raise Conflict("the session has ended; no listings can be added")
        if outcome == "duplicate":
            raise Conflict(f"sku {listing.sku!r} is already listed in this session")
        await self._changed(session_id)
        await self._publish(session_id)
        return listing

    async def _changed(self, session_id: str) -> None:
        """Order placement in this process sees the change at once, in the others as soon
        as the announcement reaches them."""
        self._contexts.invalidate(session_id)
        await self._store.announce_change(session_id)

    async def _publish(self, session_id: str) -> Session:
        """Publish the session as it is now. Two changes published concurrently may reach
        Kafka in either order, and the compacted topic keeps the last one: so after
        publishing, look again, and publish the newer version if one appeared meanwhile.
        Whoever publishes last has then published the latest state."""
        session = await self.get(session_id)
        for _ in range(MAX_REPUBLISH):
            await self._publisher.publish(
                self._topic,
                session_id,
                Envelope.of(session.to_message(), source=self._source),
            )
            if await self._store.version(session_id) == session.version:
                break
            session = await self.get(session_id)
        return session
