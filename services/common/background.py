"""Background tasks of an app (sweepers, tickers, listeners): started in a cleanup
context, cancelled and awaited when it closes. And `run_concurrently`, the task group the
services use instead of `asyncio.TaskGroup` (see there why)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

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


async def run_concurrently(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """Run the coroutines as tasks at once; their results, in order. A failure cancels
    the others, which are awaited before the error is raised (the first failed one's in
    argument order, as it is, not in an ExceptionGroup): nothing of the call keeps running
    after it, so a retry never races leftovers of itself. Cancelled from outside, it
    cancels and awaits them too.

    Not `asyncio.TaskGroup`: on Python 3.11 a child that fails while the group's body is
    already waiting in `__aexit__` makes the group cancel its parent task and never take
    that request back (CPython gh-116720, fixed in later versions). The parent task is
    left with `cancelling() == 1` for good: every loop that asks `cancel_requested()`
    after an error then ends instead of retrying (an inventory consumer stopped that way
    after a Redis failover). This cancels only the children, never the caller."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    # Every error retrieved (none is reported as "never retrieved"); the first one raised.
    errors = [task.exception() for task in tasks if not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error
    return [task.result() for task in tasks]
