"""One Redis pipeline per event-loop tick for every command issued in that tick.

Under a burst aiohttp runs dozens of request handlers per loop iteration, and each used to
pay redis-py's per-call machinery (pool checkout, retry wrapper, a write and a read
syscall) for one command. `TickPipeline` queues the commands issued while the loop runs
other callbacks and writes them in one go when the loop gets to it: a command costs its
packing and its reply parsing only (bench/RESULTS.md has the figures). Alone, a command
waits for no one: the flush is scheduled with `call_soon`, not a timer. A tick that
queues `CHUNK` commands writes them at once, while its other handlers still run, so Redis
works on the first of them while live_orders still parses the rest.

On a single node every command of the process goes over one `PipelinedConnection`
(redis_pipelined.py): written the moment it is flushed, replies read in order by the
connection's protocol callback, without a task or a pool checkout per flush. Commands
reach Redis in the order they were queued, also across a lost connection: what was
unanswered is sent again on the next connection ahead of anything queued since (every
command sent here is safe to run twice), after `RECONNECT_BACKOFF_S`, up to
`MAX_ATTEMPTS` times, then fails with the connection's error. A script is loaded
(`SCRIPT LOAD`, in the same write) before its first EVALSHA on each connection, so a
restarted Redis does not answer NOSCRIPT; one that does (SCRIPT FLUSH by hand) gets the
script loaded and the command sent again, after the commands queued behind it.

Each command keeps its own result or error; replies are raw, as the connection's
protocol gives them (RESP3: HGETALL is a map).

A command nobody waits for (`defer`: a flag that only saves later work, an announcement)
does not get a flush of its own: it rides along with the next one, ahead of that flush's
commands, or goes out alone after `DEFER_MAX_S`. When orders come one by one (a few
hundred a second) every flush was a round trip, and a round trip costs each side tens
of microseconds of system time on top of the Python (bench/RESULTS.md).

In cluster mode (a `RedisCluster` client) one connection cannot carry the tick: each
command must reach the node of its key's slot. The tick then goes out as redis-py's
non-transactional cluster pipeline, which groups the commands by node, sends each group
on one connection of its node (so commands on one key keep their order) and the groups
concurrently, follows MOVED/ASK and refreshes the slot map after a failover. A `before`
command usually lives in another slot than its script (the order outbox and the buyer's
order), so there it is sent, and must succeed, before the rest of the tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_pipelined import PipelinedConnection
from services.common.redis_scripts import ArgT, KeyT, LuaScript, RedisClient

# As create_redis's socket_timeout (LC_REDIS_TIMEOUT_S): a dead Redis surfaces as an
# error, not a hang.
READ_TIMEOUT_S = 5.0
# Waits before the retries of a flush that met a dead connection (as create_redis's Retry).
RECONNECT_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
# Sends of one flush before its commands fail: the first, and a retry after each backoff.
MAX_ATTEMPTS = len(RECONNECT_BACKOFF_S) + 1
# Commands queued in one tick that are written at once, before the tick ends (single node).
CHUNK = 16
# How long a deferred command waits for a flush to ride along with before it is sent alone.
DEFER_MAX_S = 0.002

log = logging.getLogger(__name__)

# A command, the script it runs (to reload on NOSCRIPT), and the future of its reply (None:
# a reply nobody waits for: a `before` command).
_Queued = tuple[tuple[Any, ...], LuaScript | None, "asyncio.Future[Any] | None"]


class _Flush:
    """Commands written together, and how often they were sent."""

    __slots__ = ("attempts", "queued")

    def __init__(self, queued: list[_Queued], attempts: int = 0) -> None:
        self.queued = queued
        self.attempts = attempts


class TickPipeline:
    def __init__(self, redis: RedisClient, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self._redis = redis
        self._cluster = redis if isinstance(redis, RedisCluster) else None
        self._read_timeout_s = read_timeout_s
        self._queue: list[_Queued] = []
        self._scheduled = False
        # Deferred commands waiting for the next flush, and the timer that sends them alone.
        self._deferred: list[_Queued] = []
        self._defer_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Single node: the connection, the scripts loaded on it, and while it is being
        # (re)opened the flushes waiting for it, in order.
        self._connection: PipelinedConnection | None = None
        self._loaded: set[str] = set()
        self._backlog: list[_Flush] | None = None
        # What aclose() waits for: flushes not yet answered, tasks (recovery, cluster).
        self._unanswered = 0
        self._answered_all = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def redis(self) -> RedisClient:
        return self._redis

    @property
    def cluster(self) -> bool:
        """Commands go to the node of their key's slot: a script's keys must share one."""
        return self._cluster is not None

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (`"HGET", key, field`); its reply resolves the future."""
        return self._enqueue(args, None)

    def script(
        self,
        script: LuaScript,
        keys: list[KeyT],
        args: list[ArgT],
        *,
        before: tuple[Any, ...] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one EVALSHA of `script`; `before`, a command sent just ahead of it in the
        same pipeline (so Redis runs it first), whose reply is not kept: the script's
        future fails as well if the flush fails."""
        if before is not None:
            self._queue.append((before, None, None))
        return self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def defer(self, *args: Any) -> None:
        """Queue one command whose reply nobody waits for: it goes out with the next flush
        (ahead of that flush's commands, so after everything queued before it), or alone
        after DEFER_MAX_S. It is retried like any command; a failure is logged."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(_log_deferred_failure)
        self._deferred.append((args, None, future))
        if self._defer_timer is None:
            self._defer_timer = loop.call_later(DEFER_MAX_S, self._send_deferred)

    def _send_deferred(self) -> None:
        self._defer_timer = None
        if self._deferred and not self._queue:
            self._start_flush()

    def _enqueue(self, args: tuple[Any, ...], script: LuaScript | None) -> asyncio.Future[Any]:
        # The loop is kept: asyncio.get_running_loop() costs a getpid() system call on
        # Python 3.11, twice per order at this rate.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        queue = self._queue
        queue.append((args, script, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._on_tick)
        elif len(queue) >= CHUNK and self._cluster is None:
            self._start_flush()
        return future

    def _on_tick(self) -> None:
        self._scheduled = False
        if self._queue:
            self._start_flush()

    def _start_flush(self) -> None:
        queued, self._queue = self._queue, []
        if self._deferred:
            queued[:0], self._deferred = self._deferred, []
            if self._defer_timer is not None:
                self._defer_timer.cancel()
                self._defer_timer = None
        if self._cluster is not None:
            self._in_task(self._flush(queued))
            return
        self._unanswered += 1
        self._dispatch(_Flush(queued))

    # ------------------------------------------------------------------ single node

    def _dispatch(self, flush: _Flush) -> None:
        """Write now, or after the flushes already waiting for a connection."""
        if self._backlog is not None:
            self._backlog.append(flush)
            return
        connection = self._connection
        if connection is None or not connection.ready:
            self._backlog = [flush]
            self._in_task(self._reconnect())
            return
        self._write(connection, flush)

    def _write(self, connection: PipelinedConnection, flush: _Flush) -> None:
        loaded = self._loaded
        loads: list[bytes] = []
        packed: list[bytes] = []
        for args, script, _ in flush.queued:
            if script is not None and script.sha not in loaded:
                loaded.add(script.sha)
                load: tuple[Any, ...] = ("SCRIPT", "LOAD", script.source)
                loads.append(hiredis.pack_command(load))
            # hiredis packs in C, ten times faster than redis-py's packer.
            packed.append(hiredis.pack_command(args))
        connection.send(b"".join(loads + packed), len(loads) + len(packed), (flush, len(loads)))

    def batch_answered(self, token: tuple[_Flush, int], replies: list[Any]) -> None:
        """PipelinedConnection: the replies of a flush (its SCRIPT LOADs first)."""
        flush, loads = token
        retry: list[_Queued] = []
        for entry, reply in zip(flush.queued, replies[loads:], strict=True):
            if isinstance(reply, NoScriptError) and entry[1] is not None:
                retry.append(entry)
            else:
                _resolve(entry[2], reply)
        if retry:
            # Flushed from Redis by hand: loaded again (by _write) and sent once more.
            self._loaded.clear()
            again = _Flush(retry, flush.attempts)
            self._unanswered += 1
            if self._retry(again, NoScriptError("NOSCRIPT No matching script")):
                self._dispatch(again)
        self._flush_done()

    def batches_failed(self, tokens: list[tuple[_Flush, int]], exc: Exception) -> None:
        """PipelinedConnection: it ended with these flushes unanswered. They go first to
        the next connection, in the order they were sent."""
        failed: list[_Flush] = []
        for flush, _ in tokens:
            if self._retry(flush, exc):
                failed.append(flush)
        if not failed:
            return
        if self._backlog is not None:
            self._backlog[:0] = failed
        else:
            self._backlog = failed
            self._in_task(self._reconnect())

    def _retry(self, flush: _Flush, exc: Exception) -> bool:
        """Count a failed attempt: True while attempts are left, else its commands fail
        with `exc` and it is done."""
        flush.attempts += 1
        if flush.attempts < MAX_ATTEMPTS:
            return True
        _fail(flush.queued, exc)
        self._flush_done()
        return False

    async def _reconnect(self) -> None:
        """Open a new connection and write the backlog to it, in order; a connection that
        cannot be opened counts as a failed attempt of every flush waiting."""
        while self._backlog:
            attempts = max(flush.attempts for flush in self._backlog)
            if attempts > 1:
                await asyncio.sleep(RECONNECT_BACKOFF_S[min(attempts, MAX_ATTEMPTS) - 2])
            try:
                connection = await self._open()
            except Exception as exc:
                self._backlog = [flush for flush in self._backlog if self._retry(flush, exc)]
                continue
            waiting, self._backlog = self._backlog, None
            for flush in waiting:
                self._write(connection, flush)
            return
        self._backlog = None

    async def _open(self) -> PipelinedConnection:
        """A new connection, one of the client's pool with its URL and options."""
        old, self._connection = self._connection, None
        if old is not None:
            await old.release()
        assert isinstance(self._redis, Redis)
        connection = PipelinedConnection(
            self._redis.connection_pool, self._read_timeout_s, listener=self
        )
        self._loaded = set()
        await connection.connect()
        self._connection = connection
        return connection

    def _flush_done(self) -> None:
        self._unanswered -= 1
        if self._unanswered == 0:
            self._answered_all.set()

    def _in_task(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------- cluster

    async def _flush(self, queued: list[_Queued]) -> None:
        """Cluster mode: send the tick and hand out the replies."""
        queued = await self._send_before_commands(queued)
        if not queued:
            return
        try:
            replies = await self._send([args for args, _, _ in queued])
            retry = [
                i
                for i, reply in enumerate(replies)
                if isinstance(reply, NoScriptError) and queued[i][1] is not None
            ]
            if retry:
                for script in {id(queued[i][1]): queued[i][1] for i in retry}.values():
                    assert script is not None
                    await self._redis.script_load(script.source)
                again = await self._send([queued[i][0] for i in retry])
                for i, reply in zip(retry, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:
            _fail(queued, exc)
            if not isinstance(exc, Exception):
                raise
            return
        _deliver(queued, replies)

    async def _send_before_commands(self, queued: list[_Queued]) -> list[_Queued]:
        """Cluster mode: send the `before` commands first; a script whose `before` failed
        fails with it and is not sent. Returns what is left to send."""
        firsts = [i for i, (_, _, future) in enumerate(queued) if future is None]
        if not firsts:
            return queued
        try:
            replies = await self._send([queued[i][0] for i in firsts])
        except Exception as exc:
            replies = [exc] * len(firsts)
        failed = {i + 1: reply for i, reply in zip(firsts, replies, strict=True)}
        rest: list[_Queued] = []
        for i, entry in enumerate(queued):
            if entry[2] is None:
                continue
            error = failed.get(i)
            if isinstance(error, Exception):
                if not entry[2].done():
                    entry[2].set_exception(error)
            else:
                rest.append(entry)
        return rest

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        assert self._cluster is not None
        return await self._send_to_cluster(self._cluster, commands)

    async def _send_to_cluster(
        self, cluster: RedisCluster, commands: list[tuple[Any, ...]]
    ) -> list[Any]:
        """One cluster pipeline: per node, in order, on one connection; nodes at once. Its
        own retries (slot map refreshed) cover connection errors and CLUSTERDOWN."""
        pipe = cluster.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        try:
            async with asyncio.timeout(self._read_timeout_s):
                return list(await pipe.execute(raise_on_error=False))
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no reply from Redis within {self._read_timeout_s} s") from exc

    async def aclose(self) -> None:
        """Send what is queued, wait until every flush is answered (their callers are
        waiting for them), then close the connection."""
        if self._queue or self._deferred:
            self._start_flush()
        while self._unanswered or self._tasks:
            if self._unanswered:
                self._answered_all.clear()
                await self._answered_all.wait()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connection is not None:
            await self._connection.release()
            self._connection = None


def _fail(queued: list[_Queued], exc: BaseException) -> None:
    for _, _, future in queued:
        if future is not None and not future.done():
            future.set_exception(exc)


def _deliver(queued: list[_Queued], replies: list[Any]) -> None:
    for (_, _, future), reply in zip(queued, replies, strict=True):
        _resolve(future, reply)


def _resolve(future: asyncio.Future[Any] | None, reply: Any) -> None:
    if future is None or future.done():  # nobody waits, or the caller was cancelled
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def _log_deferred_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        log.warning("a deferred Redis command failed", exc_info=error)
