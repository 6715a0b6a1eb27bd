"""Completing a pick task, and publishing `pick.completed` for it exactly once in effect.

The first completion files the task in a completions outbox in the same Lua step that
marks it done (pick_store.complete). The request then publishes `pick.completed` and takes
it out of the outbox once the broker acknowledged it; a sweep in every notifier process
sends again what has waited too long (a broker that refused, a process that died between
the two). Every send of one task's event carries the same event id (dedup_key pick_id)
and the same data (the first completion's time and author), so inventory, which journals
it, recognises a repeat. A repeated completion of a published task publishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from services.common.background import cancel_requested
from services.common.clock import epoch_ms, now_rfc3339
from services.common.events import Envelope, Outgoing, Publisher
from services.common.messages import PickCompleted
from services.notifier.pick_queue import PickTask

log = logging.getLogger(__name__)

# A completion not acknowledged this long after it happened is the sweep's to send.
REPUBLISH_AFTER_MS = 10_000
SWEEP_INTERVAL_S = 1.0
SWEEP_BATCH = 200


class CompletionRecords(Protocol):
    """What completion needs of the pick store (PickStore in Redis)."""

    async def complete(
        self, task: PickTask, completed_at: str, completed_by: str, now_ms: int
    ) -> PickTask: ...

    async def completion_pending(self, pick_id: str) -> bool: ...

    async def completions_pending(self, completed_before_ms: int, limit: int) -> list[PickTask]: ...

    async def completion_published(self, pick_ids: Sequence[str]) -> None: ...


class PickCompletion:
    def __init__(
        self,
        store: CompletionRecords,
        publisher: Publisher,
        topic: str,
        source: str,
        clock_ms: Callable[[], int] = epoch_ms,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self._clock_ms = clock_ms

    async def complete(self, task: PickTask, completed_by: str) -> PickTask:
        """Mark the task done (idempotent) and publish its pick.completed if it has not
        been acknowledged yet. A failed publish does not fail the completion: the task is
        done, and the outbox sweep sends the event."""
        done = await self._store.complete(task, now_rfc3339(), completed_by, self._clock_ms())
        if await self._store.completion_pending(done.pick_id):
            try:
                await self._publish([done])
            except Exception:
                if cancel_requested():
                    raise
                log.warning("pick.completed left to the outbox sweep", exc_info=True)
        return done

    async def sweep(self) -> int:
        """Publish the completions that waited too long; returns how many were sent."""
        overdue = await self._store.completions_pending(
            self._clock_ms() - REPUBLISH_AFTER_MS, SWEEP_BATCH
        )
        if overdue:
            await self._publish(overdue)
        return len(overdue)

    async def run(self) -> None:
        """The sweep, every second, for the app's lifetime."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                if cancel_requested():
                    raise
                log.warning("pick.completed sweep failed; next one in a second", exc_info=True)

    async def _publish(self, tasks: Sequence[PickTask]) -> None:
        items: list[Outgoing] = []
        for task in tasks:
            message = task.completion()
            if message is not None:
                items.append((self._topic, task.warehouse_id, self.envelope(message)))
        await self._publisher.publish_many(items)
        await self._store.completion_published([task.pick_id for task in tasks])

    def envelope(self, message: PickCompleted) -> Envelope[PickCompleted]:
        # The same id on every send of one task's event: a repeat is recognisably one.
        return Envelope.of(message, source=self._source, dedup_key=message.pick_id)
