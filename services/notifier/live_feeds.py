"""Push to live clients: one serialized frame per key and tick, fanned out through a
bounded outbox per client, so a slow client never slows the others.

- `SnapshotFeed` (session snapshots, the leaderboard): every tick re-reads the state of
  every watched key from Redis (so it converges whichever process consumed the events, and
  after a restart), and when it changed serializes one frame and offers it to each
  subscriber. A subscriber's outbox keeps only the newest frame: a client that is behind
  skips to the present instead of queueing history.
- `PickFeed` (warehouse queues): every task must arrive, so the outbox is a FIFO; a
  client that lets it fill up is disconnected and, on reconnect, gets every open task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from services.common.background import cancel_requested
from services.common.clock import now_rfc3339
from services.notifier.metrics import NotifierMetrics
from services.notifier.pick_queue import PickTask
from services.notifier.pick_store import PickStore

log = logging.getLogger(__name__)

# WebSocket close codes the feeds use.
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013

# Live picks a client may have unsent beyond its initial list before it is dropped.
PICK_BACKLOG = 2000


class Outbox:
    """Frames waiting for one client: either only the newest one (snapshots) or a FIFO
    of at most `limit` (picks)."""

    def __init__(self, *, latest_only: bool, limit: int = 1) -> None:
        self.latest_only = latest_only
        self.limit = limit
        self.closed = False
        self.close_code = 1000
        self.close_reason = ""
        self._frames: deque[bytes] = deque()
        self._wake = asyncio.Event()

    def offer(self, frame: bytes) -> bool:
        """Queue a frame. False when something was lost: an unsent snapshot replaced,
        or (FIFO) the outbox overflowed and is now closed."""
        if self.closed:
            return True
        lost = False
        if self.latest_only:
            lost = bool(self._frames)
            self._frames.clear()
        elif len(self._frames) >= self.limit:
            self.close(TRY_AGAIN_LATER, "client too slow; reconnect")
            return False
        self._frames.append(frame)
        self._wake.set()
        return not lost

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code
            self.close_reason = reason
            self._wake.set()

    async def next(self) -> bytes | None:
        """The next frame to send, or None once the outbox is closed."""
        while not self._frames and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            return None
        return self._frames.popleft()


class Tickable(Protocol):
    async def tick(self, at: str) -> None: ...

    def close_all(self, code: int, reason: str) -> None: ...


Loader = Callable[[list[str]], Awaitable[dict[str, dict[str, Any]]]]


@dataclass(slots=True)
class _Latest:
    content: bytes
    frame: bytes


class SnapshotFeed:
    def __init__(
        self, *, kind: str, frame_type: str, load: Loader, metrics: NotifierMetrics
    ) -> None:
        self.kind = kind
        self._frame_type = frame_type
        self._load = load
        self._metrics = metrics
        self._subscribers: dict[str, set[Outbox]] = {}
        self._latest: dict[str, _Latest] = {}
        self._seq: dict[str, int] = {}
        # Reads and the frames built from them happen in one order: an older read never
        # replaces the frame of a newer one.
        self._lock = asyncio.Lock()

    async def subscribe(self, key: str) -> Outbox:
        """A new client of `key`: its outbox already holds the current frame."""
        outbox = Outbox(latest_only=True)
        async with self._lock:
            latest = self._latest.get(key)
            if latest is None:
                payloads = await self._load([key])
                if key in payloads:
                    latest = self._remember(key, payloads[key])
            self._subscribers.setdefault(key, set()).add(outbox)
        if latest is not None:
            outbox.offer(latest.frame)
        self._metrics.clients.labels(self.kind).inc()
        return outbox

    def unsubscribe(self, key: str, outbox: Outbox) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is None or outbox not in subscribers:
            return
        subscribers.discard(outbox)
        self._metrics.clients.labels(self.kind).dec()
        if not subscribers:
            del self._subscribers[key]
            self._latest.pop(key, None)

    async def tick(self, at: str) -> None:
        """Re-read every watched key; frames whose content changed go to its subscribers,
        stamped with the tick's time `at` (so two frames are never stamped closer than the
        push interval)."""
        async with self._lock:
            keys = list(self._subscribers)
            if not keys:
                return
            payloads = await self._load(keys)
            for key, payload in payloads.items():
                if key not in self._subscribers:
                    continue  # its last client left while Redis answered
                content = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
                latest = self._latest.get(key)
                if latest is not None and latest.content == content:
                    continue
                latest = self._remember(key, payload, content, at=at)
                for outbox in self._subscribers.get(key, ()):
                    if not outbox.offer(latest.frame):
                        self._metrics.queue_drops.labels(self.kind).inc()

    def close_all(self, code: int, reason: str) -> None:
        for subscribers in self._subscribers.values():
            for outbox in subscribers:
                outbox.close(code, reason)

    def _remember(
        self,
        key: str,
        payload: dict[str, Any],
        content: bytes | None = None,
        at: str | None = None,
    ) -> _Latest:
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        # Serialized once per key and tick, whatever the number of subscribers.
        frame = orjson.dumps(
            {"type": self._frame_type, "seq": seq, "at": at or now_rfc3339(), **payload}
        )
        latest = _Latest(content or orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), frame)
        self._latest[key] = latest
        return latest


class PickFeed:
    """Open pick tasks of each watched warehouse, pushed as they are opened (and, to
    clients that ask for them, the ids of completed ones)."""

    kind = "picks_ws"

    def __init__(self, store: PickStore, metrics: NotifierMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self._subscribers: dict[str, dict[Outbox, bool]] = {}
        # Per watched warehouse: the pick sequence up to which its clients have been served.
        self._cursor: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def subscribe(self, warehouse_id: str, *, with_done: bool = False) -> Outbox:
        """A new client: its outbox holds every open task, then gets each new one."""
        async with self._lock:
            cursor = self._cursor.get(warehouse_id)
            seq, tasks = await self._store.open_snapshot(warehouse_id, cursor)
            if cursor is None:
                self._cursor[warehouse_id] = seq
            outbox = Outbox(latest_only=False, limit=len(tasks) + PICK_BACKLOG)
            for task in sorted(tasks, key=lambda t: t.seq):
                outbox.offer(_pick_frame(task))
            self._subscribers.setdefault(warehouse_id, {})[outbox] = with_done
        self._metrics.clients.labels(self.kind).inc()
        return outbox

    def unsubscribe(self, warehouse_id: str, outbox: Outbox) -> None:
        subscribers = self._subscribers.get(warehouse_id)
        if subscribers is None or outbox not in subscribers:
            return
        del subscribers[outbox]
        self._metrics.clients.labels(self.kind).dec()
        if not subscribers:
            del self._subscribers[warehouse_id]
            self._cursor.pop(warehouse_id, None)

    async def tick(self, at: str) -> None:
        async with self._lock:
            for warehouse_id in list(self._subscribers):
                cursor = self._cursor.get(warehouse_id, 0)
                seq, opened, done = await self._store.changes(warehouse_id, cursor)
                self._cursor[warehouse_id] = seq
                frames = [_pick_frame(task) for task in sorted(opened, key=lambda t: t.seq)]
                done_frames = [
                    orjson.dumps({"type": "pick_done", "pick_id": pick_id}) for pick_id in done
                ]
                for outbox, with_done in self._subscribers.get(warehouse_id, {}).items():
                    for frame in [*frames, *(done_frames if with_done else ())]:
                        if not outbox.offer(frame):
                            self._metrics.slow_disconnects.labels(self.kind).inc()
                            break

    def close_all(self, code: int, reason: str) -> None:
        for subscribers in self._subscribers.values():
            for outbox in subscribers:
                outbox.close(code, reason)


def _pick_frame(task: PickTask) -> bytes:
    return orjson.dumps(task.frame())


class Ticker:
    """Runs every feed's tick on a fixed cadence; a late tick is not caught up on."""

    def __init__(self, interval_s: float, feeds: Sequence[Tickable]) -> None:
        # LC_PUSH_INTERVAL_S=0 means "as fast as sensible", not a busy loop.
        self._interval_s = max(interval_s, 0.02)
        self._feeds = feeds
        self._failing = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # The next tick is due one interval after this one *started*, never sooner:
            # a late tick is not caught up on by a quicker one, so no subscriber ever gets
            # more than one frame per interval (at most 4 a second at 250 ms).
            started = loop.time()
            at = now_rfc3339()
            for feed in self._feeds:
                try:
                    await feed.tick(at)
                except Exception:
                    if cancel_requested():
                        raise
                    # Redis away: keep ticking (clients keep their last frame) and log
                    # once per outage, not four times a second.
                    if not self._failing:
                        log.exception("push tick failed")
                    self._failing = True
                else:
                    self._failing = False
            await asyncio.sleep(max(0.0, started + self._interval_s - loop.time()))

    def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        for feed in self._feeds:
            feed.close_all(code, reason)


async def pump(
    outbox: Outbox,
    send: Callable[[bytes], Awaitable[None]],
    *,
    min_gap_s: float,
    send_timeout_s: float,
    on_sent: Callable[[], None],
) -> None:
    """Send the outbox to one client until it closes. With `min_gap_s`, frames leave at
    most that often (a latest-only outbox meanwhile keeps just the newest). A send that
    does not finish in `send_timeout_s` (the client stopped reading) closes the outbox."""
    loop = asyncio.get_running_loop()
    last_sent = -float("inf")
    while True:
        if min_gap_s > 0:
            wait = last_sent + min_gap_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = await outbox.next()
        if frame is None:
            return
        try:
            async with asyncio.timeout(send_timeout_s):
                await send(frame)
        except TimeoutError:
            outbox.close(TRY_AGAIN_LATER, "client too slow; reconnect")
            raise
        last_sent = loop.time()
        on_sent()
