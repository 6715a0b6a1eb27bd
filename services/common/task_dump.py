"""`kill -USR1 <pid>`: log every asyncio task of a service with what it is waiting for.

A process whose event loop is idle but whose work does not move (a consumer that stopped
consuming, /readyz stuck at 503) is waiting on something that never answers; py-spy shows
an idle loop and nothing more. The dump names, for each task, its chain of awaits (one
`file:line in function` per coroutine, outermost first, as `await` nests them) and the
future it is suspended on, so the culprit reads off the log. `Task.get_stack()` would show
only the outermost frame of a suspended task; the chain is followed through `cr_await`.

Installed by `web_app.run` in every service; harmless to send at any time (it only reads).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger(__name__)

# A chain deeper than this is cut (a recursion, or a library's own deep wrapping).
MAX_DEPTH = 64


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """`file:line in function` for each coroutine (or generator) the task is suspended in,
    outermost first, then what the innermost one awaits (a future, or another awaitable)."""
    lines: list[str] = []
    awaitable: Any = task.get_coro()
    for _ in range(MAX_DEPTH):
        frame = _frame_of(awaitable)
        if frame is None:
            break
        lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        inner = _awaiting(awaitable)
        if inner is None:
            break
        awaitable = inner
    # The future the task's step is parked on: the thing that has to answer.
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is not None:
        lines.append(f"waiting for {waiter!r}")
    elif _frame_of(awaitable) is None and awaitable is not task.get_coro():
        lines.append(f"awaiting {awaitable!r}")
    return lines


def _frame_of(awaitable: Any) -> Any:
    for name in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(awaitable, name, None)
        if frame is not None:
            return frame
    return None


def _awaiting(awaitable: Any) -> Any:
    for name in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(awaitable, name, None)
        if inner is not None:
            return inner
    return None


def describe_tasks(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """One entry per pending task of the loop: name, cancellation requests, the chain."""
    return [
        {"task": task.get_name(), "cancelling": task.cancelling(), "stack": await_chain(task)}
        for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    ]


def log_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = describe_tasks(loop)
    log.warning("asyncio task dump", extra={"tasks": len(tasks)})
    for entry in tasks:
        log.warning("asyncio task", extra=entry)


def install(loop: asyncio.AbstractEventLoop, signum: int = signal.SIGUSR1) -> None:
    """Log the task dump whenever the process receives `signum` (SIGUSR1)."""
    loop.add_signal_handler(signum, log_tasks, loop)
