"""TaskManager: lifecycle, results and errors, cancellation, bounded concurrency."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from celerynb.async_tasks import TaskManager, TaskManagerStopped, UnknownTaskError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_submit_and_wait_returns_the_result():
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def main():
        tm = TaskManager()
        await tm.start()
        try:
            task_id = await tm.submit(double(21), name="double")
            assert isinstance(task_id, str) and task_id
            assert await tm.wait_for_task(task_id) == 42
            assert tm.status(task_id) == "completed"
            assert "completed=1" in repr(tm)
        finally:
            await tm.stop()

    run(main())


def test_the_coroutines_exception_reaches_the_waiter():
    async def broken():
        await asyncio.sleep(0)
        raise ValueError("bad input 7")

    async def main():
        async with TaskManager() as tm:
            task_id = await tm.submit(broken())
            with pytest.raises(ValueError, match="bad input 7"):
                await tm.wait_for_task(task_id)
            assert tm.status(task_id) == "failed"
            # Waiting again gives the same outcome.
            with pytest.raises(ValueError):
                await tm.wait_for_task(task_id)

    run(main())


def test_unknown_id_is_a_clear_key_error():
    async def main():
        async with TaskManager() as tm:
            with pytest.raises(UnknownTaskError, match="No task 'nope' in this TaskManager") as info:
                await tm.wait_for_task("nope")
            assert isinstance(info.value, KeyError)
            with pytest.raises(KeyError):
                tm.status("nope")
            with pytest.raises(KeyError):
                tm.cancel("nope")

    run(main())


def test_submit_rejects_a_function_that_was_not_called():
    async def work():
        return 1

    async def main():
        async with TaskManager() as tm:
            with pytest.raises(TypeError, match=r"such as work\(\.\.\.\).*call it"):
                await tm.submit(work)
            with pytest.raises(TypeError, match="not int"):
                await tm.submit(3)

    run(main())


def test_wait_timeout_leaves_the_coroutine_running():
    async def main():
        release = asyncio.Event()

        async def blocked():
            await release.wait()
            return "done"

        async with TaskManager() as tm:
            task_id = await tm.submit(blocked())
            with pytest.raises(TimeoutError, match="did not finish within 0.05 s"):
                await tm.wait_for_task(task_id, timeout=0.05)
            assert tm.status(task_id) == "running"
            release.set()
            assert await tm.wait_for_task(task_id, timeout=5) == "done"

    run(main())


def test_cancel_a_running_coroutine():
    async def main():
        started = asyncio.Event()
        cleaned = []

        async def forever():
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append(True)

        async with TaskManager() as tm:
            task_id = await tm.submit(forever())
            await started.wait()
            assert tm.cancel(task_id) is True
            with pytest.raises(asyncio.CancelledError):
                await tm.wait_for_task(task_id)
            assert tm.status(task_id) == "cancelled"
            assert cleaned == [True]
            assert tm.cancel(task_id) is False  # already finished

    run(main())


def test_stop_cancels_everything_waits_and_is_idempotent():
    async def main():
        ended = []

        async def forever(i):
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0)  # cleanup that itself awaits: stop() must wait for it
                ended.append(i)

        tm = TaskManager(max_concurrency=2)
        await tm.start()
        ids = [await tm.submit(forever(i)) for i in range(5)]
        while sum(tm.status(i) == "running" for i in ids) < 2:
            await asyncio.sleep(0)
        await tm.stop()
        assert sorted(ended) == [0, 1]  # the 3 pending ones never started
        assert {tm.status(i) for i in ids} == {"cancelled"}
        await tm.stop()  # idempotent
        assert not tm.running
        late = forever(9)
        with pytest.raises(TaskManagerStopped, match="start"):
            await tm.submit(late)
        await tm.start()  # reusable
        task_id = await tm.submit(asyncio.sleep(0, "again"))
        assert await tm.wait_for_task(task_id) == "again"
        await tm.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "coroutine was never awaited"
        run(main())
        gc.collect()


def test_concurrency_is_bounded():
    async def main():
        running = 0
        peak = 0
        gate = asyncio.Event()

        async def work(i):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            return i

        async with TaskManager(max_concurrency=3) as tm:
            ids = [await tm.submit(work(i)) for i in range(10)]
            while running < 3:
                await asyncio.sleep(0)
            for _ in range(20):  # give the others every chance to (wrongly) start
                await asyncio.sleep(0)
            assert running == 3
            assert [tm.status(i) for i in ids].count("pending") == 7
            gate.set()
            results = [await tm.wait_for_task(i) for i in ids]
        assert results == list(range(10))
        assert peak == 3

    run(main())


def test_invalid_max_concurrency():
    with pytest.raises(ValueError, match="positive integer"):
        TaskManager(max_concurrency=0)


def test_finished_tasks_beyond_keep_finished_are_forgotten():
    async def main():
        async with TaskManager(keep_finished=2) as tm:
            ids = []
            for i in range(4):
                ids.append(await tm.submit(asyncio.sleep(0, i)))
                await tm.wait_for_task(ids[-1])
            assert list(tm.tasks()) == ids[-2:]
            with pytest.raises(UnknownTaskError):
                tm.status(ids[0])

    run(main())


def test_failed_task_nobody_waits_for_logs_no_unretrieved_exception(caplog):
    async def broken():
        raise RuntimeError("ignored")

    async def main():
        async with TaskManager() as tm:
            task_id = await tm.submit(broken())
            while tm.status(task_id) != "failed":
                await asyncio.sleep(0)

    run(main())
    gc.collect()
    assert "exception was never retrieved" not in caplog.text
