import asyncio

from services.common.background import cancel_requested, stop_tasks


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
