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
connection's protocol callback, without a task or a pool checkout per flush, and one
connection keeps every command in the order it was queued.

Each command keeps its own result or error; replies are raw, as the connection's
protocol gives them (RESP3: HGETALL is a map). A NOSCRIPT reply (Redis restarted,
SCRIPT FLUSH) loads the script and runs that command again: it did not run, so running
it again is safe. Connection errors and timeouts retry the flush a few times on a new
connection (every script here is safe to run twice), then fail every command of it.

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
from functools import partial
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_pipelined import PipelinedConnection
from services.common.redis_scripts import ArgT, KeyT, LuaScript, RedisClient

# As create_redis's socket_timeout (LC_REDIS_TIMEOUT_S): a dead Redis surfaces as an
# error, not a hang.
READ_TIMEOUT_S = 5.0
# Waits before the retries of a flush that met a dead connection (as create_redis's Retry).
RECONNECT_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
# Commands queued in one tick that are written at once, before the tick ends (single node).
CHUNK = 16

# A command, the script it runs (to reload on NOSCRIPT), and the future of its reply (None:
# a reply nobody waits for: a `before` command).
_Queued = tuple[tuple[Any, ...], LuaScript | None, "asyncio.Future[Any] | None"]


class TickPipeline:
    def __init__(self, redis: RedisClient, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self._redis = redis
        self._cluster = redis if isinstance(redis, RedisCluster) else None
        self._read_timeout_s = read_timeout_s
        self._queue: list[_Queued] = []
        self._scheduled = False
        self._flushes: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: PipelinedConnection | None = None
        self._connecting = asyncio.Lock()

    @property
    def redis(self) -> RedisClient:
        return self._redis

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
        elif len(queue) >= CHUNK and self._connection is not None and self._connection.ready:
            self._start_flush()
        return future

    def _on_tick(self) -> None:
        self._scheduled = False
        if self._queue:
            self._start_flush()

    def _start_flush(self) -> None:
        queued, self._queue = self._queue, []
        # Commands queued one after the other reach Redis in that order (the order store
        # relies on it): one connection, written in order; a `before` and its script are
        # queued together and never split.
        connection = self._connection
        if self._cluster is None and connection is not None and connection.ready:
            batch = connection.send(_pack(queued), len(queued))
            self._flushes.add(batch)
            batch.add_done_callback(partial(self._answered, queued))
            return
        self._flush_in_task(queued)

    def _flush_in_task(self, queued: list[_Queued], replies: list[Any] | None = None) -> None:
        task = asyncio.ensure_future(self._flush(queued, replies))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def _answered(self, queued: list[_Queued], batch: asyncio.Future[list[Any]]) -> None:
        """The replies of a batch written at once: handed out, unless the connection failed
        or a script must be loaded first (then a task takes it from there)."""
        self._flushes.discard(batch)
        if batch.cancelled() or batch.exception() is not None:
            self._flush_in_task(queued)
            return
        replies = batch.result()
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError) and queued[i][1] is not None:
                self._flush_in_task(queued, replies)
                return
        _deliver(queued, replies)

    async def _flush(self, queued: list[_Queued], replies: list[Any] | None = None) -> None:
        """Send (again, after a failed batch) and hand out the replies; `replies`: a batch
        answered already, with NOSCRIPT among them."""
        if self._cluster is not None:
            queued = await self._send_before_commands(queued)
            if not queued:
                return
        try:
            if replies is None:
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
            for _, _, future in queued:
                if future is not None and not future.done():
                    future.set_exception(exc)
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
        """Write all, read all, on one pooled connection. redis-py's own Pipeline costs
        about as much again per command (a pipeline object, retry and observability
        wrappers, reply callbacks): callers here take raw replies."""
        if self._cluster is not None:
            return await self._send_to_cluster(self._cluster, commands)
        for attempt, backoff in enumerate(RECONNECT_BACKOFF_S):
            try:
                return await self._send_once(commands)
            except (RedisConnectionError, RedisTimeoutError):
                # Redis restarted or a connection went stale: the commands did not run,
                # or ran and are safe to run again (every script here is replay-safe).
                if attempt == len(RECONNECT_BACKOFF_S) - 1:
                    raise
                await asyncio.sleep(backoff)
        raise AssertionError("unreachable")

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

    async def _send_once(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        connection = await self._connected()
        return await connection.send(
            b"".join([hiredis.pack_command(args) for args in commands]), len(commands)
        )

    async def _connected(self) -> PipelinedConnection:
        """The process's connection, opened (again) if it is not: one of the client's pool,
        with its URL and options."""
        async with self._connecting:
            connection = self._connection
            if connection is None or not connection.ready:
                if connection is not None:
                    await connection.release()
                assert isinstance(self._redis, Redis)
                connection = PipelinedConnection(self._redis.connection_pool, self._read_timeout_s)
                self._connection = connection
                await connection.connect()
            return connection

    async def aclose(self) -> None:
        """Wait for the flushes in flight (their callers are waiting for them), then close
        the connection."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._connection is not None:
            await self._connection.release()
            self._connection = None


def _pack(queued: list[_Queued]) -> bytes:
    # hiredis packs in C, ten times faster than redis-py's packer.
    return b"".join([hiredis.pack_command(args) for args, _, _ in queued])


def _deliver(queued: list[_Queued], replies: list[Any]) -> None:
    for (_, _, future), reply in zip(queued, replies, strict=True):
        if future is None or future.done():  # nobody waits, or the caller was cancelled
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)
