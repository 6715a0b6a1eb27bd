"""Background tasks of an app (sweepers, tickers, listeners): started in a cleanup
context, cancelled and awaited when it closes."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_tasks(*tasks: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel every task, then wait for each to finish its cancellation."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
