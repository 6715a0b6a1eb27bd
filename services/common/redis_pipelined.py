"""One Redis connection that carries every command of a process, written the moment it is
flushed and answered in order: Redis pipelining without a round trip per batch.

`TickPipeline` used to take a pooled connection per event-loop tick, write the tick's
commands, await their replies and give the connection back: a task, a pool checkout and
a StreamReader read per tick, and nothing sent while the loop was still running handlers.
With 64 buyers waiting, live_orders and Redis took turns: live_orders parsed a tick's
requests while Redis idled, then idled while Redis ran that tick's scripts (sold-out
path: 0.76 + 0.23 of a core, one after the other; bench/RESULTS.md). Here a batch is
written as soon as it is flushed (`send` is synchronous), the next one may follow before
the first is answered, and replies are parsed by hiredis in the protocol's callback; the
listener hears of each batch as its last reply arrives. One connection keeps every
command in the order it was sent.

The connection is one of the client's pool, set up by redis-py (TLS, AUTH/HELLO 3, SELECT,
client name: whatever the pool's URL and keyword arguments say), then its transport is
handed to this protocol; RESP3 replies, the same as every other client of the process.
It stays checked out of the pool, so closing the client (`aclose()`) closes it too. A
batch not answered within `timeout_s` aborts the connection. When the connection ends,
for whatever reason, the listener hears once of every batch still unanswered, in the
order they were sent (`batches_failed`), so it can send them again in that order; the
connection is then done, and a new one takes over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class BatchListener(Protocol):
    def batch_answered(self, token: Any, replies: list[Any]) -> None:
        """Every reply of the batch sent with `token`, in order (an error reply is an
        exception instance in its place)."""

    def batches_failed(self, tokens: list[Any], exc: Exception) -> None:
        """The connection ended with these batches unanswered (in the order sent)."""


class _Batch:
    __slots__ = ("deadline", "expected", "replies", "token")

    def __init__(self, token: Any, expected: int, deadline: float) -> None:
        self.token = token
        self.expected = expected
        self.replies: list[Any] = []
        self.deadline = deadline


class PipelinedConnection(asyncio.Protocol):
    def __init__(self, pool: ConnectionPool, timeout_s: float, listener: BatchListener) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._listener = listener
        self._connection: AbstractConnection | None = None
        self._stream_protocol: asyncio.BaseProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=False)
        self._batches: deque[_Batch] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        transport = self._transport
        return transport is not None and not transport.is_closing()

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

    def send(self, packed: bytes, count: int, token: Any) -> None:
        """Write `count` packed commands now; the listener hears of their replies with
        `token`. Only while `ready`."""
        transport = self._transport
        loop = self._loop
        assert transport is not None and loop is not None, "connect() first"
        batch = _Batch(token, count, loop.time() + self._timeout_s)
        self._batches.append(batch)
        transport.write(packed)
        if self._watchdog is None:
            self._watchdog = loop.call_at(batch.deadline, self._check_deadline)

    async def release(self) -> None:
        """Close the connection (the listener hears of what was unanswered) and give it
        back to the pool."""
        self._fail(RedisConnectionError("connection closed"))
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)

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
                self._listener.batch_answered(batch.token, batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))
        if self._stream_protocol is not None:
            self._stream_protocol.connection_lost(exc)
            self._stream_protocol = None

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
        """The connection is done: closed, and every batch in flight handed back, once."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        batches, self._batches = self._batches, deque()
        if batches:
            self._listener.batches_failed([batch.token for batch in batches], exc)
