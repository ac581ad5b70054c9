"""Worker-side progress: ``track(iterable, task=self)`` reports PROGRESS meta like the guide.

Runs inside workers, so it imports neither IPython nor widgets. Updates are throttled (at most
one every ``every`` seconds, plus the first and the last), so a tight loop costs a handful of
Redis writes, not one per item.

It is also where a cancel takes effect for tasks that cannot be killed: in-kernel workers
(threads/solo pools) ignore ``revoke(terminate=True)`` for a running task, but they do record
the revoke, and ``track`` checks that record at every item.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from celery import Task, current_task
from celery.exceptions import Ignore

from celerynb import _compat

T = TypeVar("T")


class TaskCancelled(Ignore):
    """Raised inside a task that was cancelled; the task's state is REVOKED, not FAILURE."""


def is_cancelled(task: Task | None = None) -> bool:
    """True when this worker process has received a revoke for the running task.

    Works for workers whose tasks run in the worker's own process (threads, solo, gevent,
    the in-kernel workers). Prefork children never see the revoke list: use
    ``revoke(terminate=True)`` for them, which kills the child.
    """
    task = task or current_task
    task_id = getattr(getattr(task, "request", None), "id", None)
    if not task_id:
        return False
    return _compat.is_revoked(task_id)


def raise_if_cancelled(task: Task | None = None) -> None:
    """Stop the task here if it was cancelled (marks it REVOKED, then raises :class:`TaskCancelled`)."""
    task = task or current_task
    if is_cancelled(task):
        request = task.request
        task.backend.mark_as_revoked(request.id, reason="cancelled", request=request)
        raise TaskCancelled(f"Task {request.id} was cancelled.")


class track(Generic[T]):  # noqa: N801 - used like a function, as tqdm is
    """Iterate over ``iterable`` and report progress from inside a task.

    Args:
        iterable: what to loop over.
        task: the bound task (``self``); the current task by default.
        total: number of items when ``len(iterable)`` does not work.
        every: minimum seconds between two updates (0.1 gives at most ~10 per second).
        status: a format string for the ``status`` text, with ``{current}`` and ``{total}``.

    Each update stores ``state="PROGRESS"`` with ``meta={"progress": %, "current": i,
    "total": n, "status": "Processing item i/n"}``, the format of the guide.
    """

    def __init__(self, iterable: Iterable[T], task: Task | None = None, total: int | None = None,
                 every: float = 0.1, status: str = "Processing item {current}/{total}") -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0 seconds, not {every!r}.")
        self.iterable = iterable
        self.task = task if task is not None else current_task
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.every = every
        self.status = status
        self.current = 0
        self.updates = 0
        self._last = 0.0

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("track() does not know the total: pass total=N.")
        return self.total

    def __iter__(self) -> Iterator[T]:
        self._report(force=True)
        for item in self.iterable:
            raise_if_cancelled(self._task())
            yield item
            self.current += 1
            self._report(force=False)
        self._report(force=True)

    def _task(self) -> Task | None:
        task = self.task
        return task if getattr(getattr(task, "request", None), "id", None) else None

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"current": self.current, "total": self.total}
        if self.total:
            meta["progress"] = int(self.current * 100 / self.total)
        meta["status"] = self.status.format(current=self.current, total=self.total if self.total is not None else "?")
        return meta

    def _report(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        task = self._task()
        if task is None:
            return
        self._last = now
        self.updates += 1
        task.update_state(state="PROGRESS", meta=self.meta())
