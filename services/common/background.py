"""Background tasks of an app (sweepers, tickers, listeners): started in a cleanup
context, cancelled and awaited when it closes."""

from __future__ import annotations

import asyncio
import contextlib

# How long to wait for a cancelled task before asking it again.
RECANCEL_AFTER_S = 1.0


async def stop_tasks(*tasks: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel every task, then wait for each to finish its cancellation.

    A cancellation can be swallowed on its way through a library (a client that turns
    the CancelledError into its own error, which a loop then logs and survives); the task
    then runs on with `cancelling() > 0` and would never stop. So a task that has not
    finished a second after being cancelled is cancelled again, until it does."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        while not task.done():
            await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cancel_requested() -> bool:
    """True when the current task was asked to stop: loops that catch `Exception` check
    this so a cancellation converted into another error still ends them."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
