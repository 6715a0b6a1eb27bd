import ast
import asyncio
from pathlib import Path

import pytest

from services.common.background import cancel_requested, run_concurrently, stop_tasks


async def test_a_task_that_swallowed_its_cancellation_is_stopped_all_the_same() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()  # what a library that converts the error amounts to
        await asyncio.sleep(30)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await stop_tasks(task)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_a_loop_that_survives_errors_still_ends_on_a_converted_cancellation() -> None:
    rounds = 0

    async def loop_forever() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError as exc:
                    raise ConnectionError("client closed") from exc
            except Exception:
                if cancel_requested():
                    raise
            await asyncio.sleep(0)

    task = asyncio.create_task(loop_forever())
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}
    assert rounds == 1
    assert isinstance(task.exception(), ConnectionError)


async def test_run_concurrently_answers_every_result_in_order() -> None:
    async def late(value: int) -> int:
        await asyncio.sleep(0)
        return value

    assert await run_concurrently(late(1), late(2), late(3)) == [1, 2, 3]
    assert await run_concurrently() == []


async def test_a_failure_stops_the_others_and_leaves_the_caller_uncancelled() -> None:
    """The caller is waiting for the children when one fails: asyncio.TaskGroup on 3.11
    cancels the caller then and never takes it back (cancelling() stays 1, and every
    `cancel_requested()` loop above it gives up); run_concurrently cancels only the
    children, and has awaited them before the error reaches the caller."""
    sibling_cancelled = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("node down")

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sibling_cancelled.set()
            raise

    with pytest.raises(ConnectionError, match="node down"):
        await run_concurrently(slow(), fails())
    assert sibling_cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert not cancel_requested()


async def test_cancelled_from_outside_it_cancels_and_awaits_the_children() -> None:
    started = asyncio.Event()
    children_done: list[str] = []

    async def child(name: str) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            children_done.append(name)

    caller = asyncio.create_task(run_concurrently(child("a"), child("b")))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(children_done) == ["a", "b"]


def test_no_service_uses_asyncio_taskgroup() -> None:
    """run_concurrently instead, while the services run on Python 3.11 (see there)."""
    root = Path(__file__).resolve().parents[2] / "services"
    users = [
        f"{path.relative_to(root.parent)}:{node.lineno}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Attribute) and node.attr == "TaskGroup")
        or (isinstance(node, ast.alias) and node.name == "TaskGroup")
    ]
    assert users == []
