"""One Redis connection that carries every command of a process, written the moment it is
flushed and answered in order: Redis pipelining without a round trip per batch.

`TickPipeline` used to take a pooled connection per event-loop tick, write the tick's
commands, await their replies and give the connection back: a task, a pool checkout and
a StreamReader read per tick, and nothing sent while the loop was still running handlers.
With 64 buyers waiting, live_orders and Redis took turns: live_orders parsed a tick's
requests while Redis idled, then idled while Redis ran that tick's scripts (sold-out
path: 0.76 + 0.23 of a core, one after the other; bench/RESULTS.md). Here a batch is
written as soon as it is flushed (`send` is synchronous), the next one may follow before
the first is answered, and replies are parsed by hiredis in the protocol's callback,
each batch's future resolved as its last reply arrives. One connection keeps every
command in the order it was sent.

The connection is one of the client's pool, set up by redis-py (TLS, AUTH/HELLO 3, SELECT,
client name: whatever the pool's URL and keyword arguments say), then its transport is
handed to this protocol; RESP3 replies, the same as every other client of the process.
It stays checked out of the pool, so closing the client (`aclose()`) closes it too. A
batch not answered within `timeout_s` aborts the connection: it and every batch after it
fail with `TimeoutError` (redis-py's), as a dropped connection fails them with
`ConnectionError`.
The caller retries (every command sent through here is safe to run twice); the next
`send` after a failure needs `connect()` again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Batch:
    __slots__ = ("deadline", "expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[Any] = []
        self.deadline = deadline


class PipelinedConnection(asyncio.Protocol):
    def __init__(self, pool: ConnectionPool, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._connection: AbstractConnection | None = None
        self._stream_protocol: asyncio.BaseProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=False)
        self._batches: deque[_Batch] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        return self._transport is not None

    async def connect(self) -> None:
        """Check a connection out of the pool (redis-py connects it), then take its
        transport over."""
        assert self._connection is None, "one connection per PipelinedConnection"
        self._loop = asyncio.get_running_loop()
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        self._connection = connection
        writer = connection._writer
        if writer is None:
            raise RedisConnectionError("Redis connection closed during its handshake")
        transport = writer.transport
        # Told when the connection ends, so redis-py's disconnect() does not wait for it.
        self._stream_protocol = transport.get_protocol()
        transport.set_protocol(self)
        self._transport = transport

    async def release(self) -> None:
        """Close the connection (failing what is in flight) and give it back to the pool."""
        self.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write `count` packed commands now; the future gets their replies, in order (an
        error reply is an exception instance in its place)."""
        transport = self._transport
        assert transport is not None and self._loop is not None, "connect() first"
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        batch = _Batch(future, count, self._loop.time() + self._timeout_s)
        self._batches.append(batch)
        transport.write(packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(batch.deadline, self._check_deadline)
        return future

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        batches = self._batches
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not batches:
                self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            batch = batches[0]
            if isinstance(reply, ResponseError):
                reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            batch.replies.append(reply)
            if len(batch.replies) == batch.expected:
                batches.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))
        if self._stream_protocol is not None:
            self._stream_protocol.connection_lost(exc)
            self._stream_protocol = None

    def pause_writing(self) -> None:
        # Redis reads as fast as it is written to; a full socket buffer only means a large
        # batch, whose replies the caller awaits anyway.
        pass

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------------------- end

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._batches or self._loop is None:
            return
        oldest = self._batches[0].deadline
        if self._loop.time() >= oldest:
            self._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s} s"))
            return
        self._watchdog = self._loop.call_at(oldest, self._check_deadline)

    def _fail(self, exc: Exception) -> None:
        """Every batch in flight fails with `exc`; the connection is closed."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        batches, self._batches = self._batches, deque()
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(exc)

    def close(self) -> None:
        self._fail(RedisConnectionError("connection closed"))
