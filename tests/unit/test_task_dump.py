"""`kill -USR1 <pid>` logs every asyncio task with the chain of awaits it is suspended in,
down to the future it waits for."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from services.common import task_dump
from tests.waiting import eventually


async def stuck_inner(never: asyncio.Future[None]) -> None:
    await never


async def stuck_outer(never: asyncio.Future[None]) -> None:
    await stuck_inner(never)


async def test_each_task_is_described_down_to_the_future_it_waits_for() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(stuck_outer(never), name="stuck")
    await asyncio.sleep(0)  # let it start and suspend
    try:
        described = {d["task"]: d for d in task_dump.describe_tasks(asyncio.get_running_loop())}
        stack = described["stuck"]["stack"]
        assert [line.rsplit(" in ", 1)[1] for line in stack[:2]] == ["stuck_outer", "stuck_inner"]
        assert stack[-1].startswith("waiting for <Future pending")
        assert described["stuck"]["cancelling"] == 0
    finally:
        task.cancel()


async def test_sigusr1_logs_the_dump(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(stuck_outer(never), name="stuck")
    caplog.set_level(logging.WARNING, "services.common.task_dump")
    task_dump.install(loop)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)

        async def dumped() -> bool:
            return any(getattr(r, "task", None) == "stuck" for r in caplog.records)

        await eventually(dumped, timeout=5, what="the task dump in the log")
        assert any(r.getMessage() == "asyncio task dump" for r in caplog.records)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        task.cancel()
