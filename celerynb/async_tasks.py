"""Run coroutines side by side with Celery work: a small supervisor for asyncio tasks.

The guide starts a :class:`TaskManager`, submits a coroutine that coordinates Celery tasks,
and waits for it by id. This module gives that a real lifecycle: a bound on how many
coroutines run at once, cancellation that is waited for, and errors that reach the caller of
:meth:`TaskManager.wait_for_task` instead of asyncio's "exception was never retrieved" log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("celerynb.async_tasks")

PENDING = "pending"  # submitted, waiting for a concurrency slot
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"


class UnknownTaskError(KeyError):
    """No task with that id was submitted to this manager (or it was forgotten)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else "unknown task"


class TaskManagerStopped(RuntimeError):
    """The manager was stopped: it accepts no new coroutines until started again."""


@dataclass
class _Entry:
    task_id: str
    name: str
    task: asyncio.Task
    state: str = PENDING
    exception: BaseException | None = field(default=None, repr=False)


class TaskManager:
    """Supervise coroutines on the running event loop.

    Args:
        max_concurrency: how many submitted coroutines may run at the same time; the others
            wait (state ``pending``) for a slot, in submission order.
        keep_finished: how many finished tasks stay available to :meth:`wait_for_task` and
            :meth:`status`; the oldest finished ones are forgotten beyond that.

    Example::

        async with TaskManager(max_concurrency=4) as tm:
            task_id = await tm.submit(work(), name="work")
            result = await tm.wait_for_task(task_id)
    """

    def __init__(self, max_concurrency: int = 10, *, keep_finished: int = 1000) -> None:
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive integer, not {max_concurrency!r}.")
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be >= 0, not {keep_finished!r}.")
        self.max_concurrency = max_concurrency
        self.keep_finished = keep_finished
        self._entries: dict[str, _Entry] = {}
        self._finished_ids: deque[str] = deque()  # oldest first, to forget beyond keep_finished
        self._semaphore: asyncio.Semaphore | None = None
        self._started = False
        self._stopped = False

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            counts[entry.state] = counts.get(entry.state, 0) + 1
        state = "running" if self._started else ("stopped" if self._stopped else "new")
        summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no tasks"
        return f"<TaskManager {state} max_concurrency={self.max_concurrency} {summary}>"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started

    async def start(self) -> TaskManager:
        """Accept coroutines; starting twice is harmless, and a stopped manager starts again."""
        if not self._started:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._started = True
            self._stopped = False
        return self

    async def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel every coroutine still pending or running and wait until they have ended.

        Idempotent. Coroutines that swallow the cancellation are waited for up to ``timeout``
        seconds, then left behind with a warning.
        """
        self._started = False
        self._stopped = True
        tasks = [e.task for e in self._entries.values() if not e.task.done()]
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, left = await asyncio.wait(tasks, timeout=timeout)
        if left:
            names = ", ".join(sorted(e.name for e in self._entries.values() if e.task in left))
            logger.warning("TaskManager.stop: %d coroutine(s) ignored cancellation: %s", len(left), names)

    async def __aenter__(self) -> TaskManager:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def submit(self, coro: Awaitable[Any], name: str | None = None) -> str:
        """Schedule ``coro`` and return its task id at once (it runs when a slot is free).

        Starts the manager if it was never started. Raises :class:`TaskManagerStopped` after
        :meth:`stop` (call :meth:`start` again to reuse the manager).
        """
        if not isinstance(coro, Awaitable):
            if callable(coro):
                fn = getattr(coro, "__name__", "the function")
                raise TypeError(f"submit() expects a coroutine such as {fn}(...), not the function {fn} itself: call it.")
            raise TypeError(f"submit() expects a coroutine (the result of calling an async function), not {type(coro).__name__}.")
        if not self._started:
            if self._stopped:
                _close(coro)
                raise TaskManagerStopped("This TaskManager was stopped: call `await manager.start()` before submitting again.")
            await self.start()
        task_id = uuid.uuid4().hex
        label = name or getattr(coro, "__qualname__", None) or type(coro).__name__
        entry = _Entry(task_id, str(label), task=None)  # type: ignore[arg-type]
        entry.task = asyncio.get_running_loop().create_task(self._run(entry, coro), name=f"TaskManager:{label}")
        entry.task.add_done_callback(lambda t: self._finished(entry, t, coro))
        self._entries[task_id] = entry
        return task_id

    async def _run(self, entry: _Entry, coro: Awaitable[Any]) -> Any:
        assert self._semaphore is not None
        async with self._semaphore:
            entry.state = RUNNING
            return await coro

    def _finished(self, entry: _Entry, task: asyncio.Task, coro: object) -> None:
        _close(coro)  # cancelled while pending: it never started, and Python would warn
        if task.cancelled():
            entry.state = CANCELLED
        elif task.exception() is not None:  # retrieving it silences asyncio's "never retrieved" log
            entry.state = FAILED
            entry.exception = task.exception()
            logger.debug("task %s (%s) failed: %r", entry.task_id, entry.name, entry.exception)
        else:
            entry.state = COMPLETED
        self._forget_old(entry.task_id)

    def _forget_old(self, task_id: str) -> None:
        self._finished_ids.append(task_id)
        while len(self._finished_ids) > self.keep_finished:
            self._entries.pop(self._finished_ids.popleft(), None)

    def _entry(self, task_id: str) -> _Entry:
        try:
            return self._entries[task_id]
        except (KeyError, TypeError):
            raise UnknownTaskError(
                f"No task {task_id!r} in this TaskManager: use the id returned by `await manager.submit(...)`."
            ) from None

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> Any:
        """The coroutine's return value, or its exception raised here.

        Raises:
            UnknownTaskError: no such id.
            TimeoutError: not finished within ``timeout`` seconds (the coroutine keeps running).
            asyncio.CancelledError: the coroutine was cancelled.
        """
        entry = self._entry(task_id)
        if timeout is None:
            return await asyncio.shield(entry.task)
        try:
            return await asyncio.wait_for(asyncio.shield(entry.task), timeout)
        except TimeoutError:
            raise TimeoutError(f"Task {task_id} ({entry.name}) did not finish within {timeout} s.") from None

    def status(self, task_id: str) -> str:
        """``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self._entry(task_id).state

    def cancel(self, task_id: str) -> bool:
        """Ask the coroutine to stop; True if it had not finished yet.

        The cancellation takes effect at its next ``await``; :meth:`wait_for_task` then raises
        :class:`asyncio.CancelledError`.
        """
        entry = self._entry(task_id)
        if entry.task.done():
            return False
        return entry.task.cancel()

    def tasks(self) -> dict[str, str]:
        """Every known task id with its state, in submission order."""
        return {k: e.state for k, e in self._entries.items()}


def _close(coro: object) -> None:
    """Close a coroutine that never started, so that Python does not warn it was never awaited."""
    if isinstance(coro, Coroutine) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        coro.close()
