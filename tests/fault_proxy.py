"""A TCP proxy that sits between a service and a server and misbehaves on request: it
delays the server's replies, or cuts a connection in the middle of a reply. Only the
server-to-client direction is disturbed; requests always reach the server, which is what
makes these faults nasty (the command ran, its reply never came)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from deploy.local.stack import free_port


@dataclass
class FaultCounts:
    delayed_chunks: int = 0
    cut_connections: int = 0
    connections: int = 0


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    port: int = field(default_factory=free_port)
    # What happens to the next reply bytes: "pass", "delay" (held for delay_s) or "cut"
    # (half of the chunk forwarded, then both sides closed).
    mode: str = "pass"
    delay_s: float = 1.0
    counts: FaultCounts = field(default_factory=FaultCounts)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        requests = asyncio.ensure_future(self._pump(reader, up_writer, disturb=False))
        replies = asyncio.ensure_future(self._pump(up_reader, writer, disturb=True))
        for task in (requests, replies):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait((requests, replies), return_when=asyncio.FIRST_COMPLETED)
        for task in (requests, replies):
            task.cancel()
        for stream in (writer, up_writer):
            stream.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, disturb: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await source.read(65536):
                if disturb and self.mode == "delay":
                    self.counts.delayed_chunks += 1
                    await asyncio.sleep(self.delay_s)
                elif disturb and self.mode == "cut":
                    self.counts.cut_connections += 1
                    sink.write(chunk[: max(1, len(chunk) // 2)])
                    await sink.drain()
                    return
                sink.write(chunk)
                await sink.drain()
