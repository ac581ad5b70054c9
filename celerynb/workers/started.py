"""STARTED, written only for tasks still running after :data:`STARTED_AFTER` seconds.

Celery's ``task_track_started`` writes STARTED before every task: a read and a write of the
result (two round trips) per task, which for a small task is a third of its cost, and the state
is replaced a millisecond later by SUCCESS: no display could ever show it. celerynb's tasks
report STARTED the same way (same document: pid and hostname) once they have run for 50 ms,
from one thread per worker process, so every task that can be seen running is seen running.

The write is cancelled before the task's own end state is stored (and before its own
``update_state``), so a late STARTED can never overwrite an end state or a PROGRESS report.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task, states

logger = logging.getLogger("celerynb.worker")

#: Seconds a task runs before its STARTED state is written.
STARTED_AFTER = 0.05


class StartedReporter:
    """Writes the STARTED state of tasks that run longer than ``after`` seconds (one thread).

    While tasks come, the thread wakes every ``after`` s at most, not once per task; after
    ``IDLE_AFTER`` s without one it sleeps until the next is scheduled."""

    IDLE_AFTER = 2.0

    def __init__(self, after: float = STARTED_AFTER) -> None:
        self.after = after
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[Task, Any]] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._dozing = False
        self._last_scheduled = 0.0
        self.written = 0

    def schedule(self, task: Task, request: Any) -> None:
        task_id = request.id
        with self._cond:
            self._ensure_thread()
            self._due[task_id] = (task, request)
            self._last_scheduled = now = time.monotonic()
            heapq.heappush(self._heap, (now + self.after, next(self._seq), task_id))
            if self._dozing:  # otherwise its timed wait ends before this deadline: no wake-up per task
                self._cond.notify()

    def cancel(self, task_id: str) -> None:
        """The task ends or reports its own state: no STARTED after this returns."""
        with self._cond:  # waits for a write in progress
            self._due.pop(task_id, None)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # a forked pool child: the parent's thread is not here
            self._pid, self._thread = os.getpid(), None
            self._due.clear()
            self._heap.clear()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="celerynb-started", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2] not in self._due:  # ended before its STARTED
                    heapq.heappop(self._heap)
                if not self._heap:
                    if time.monotonic() - self._last_scheduled < self.IDLE_AFTER:
                        self._cond.wait(self.after)  # ends before the deadline of anything scheduled meanwhile
                    else:
                        self._dozing = True
                        self._cond.wait()
                        self._dozing = False
                    continue
                deadline, _, task_id = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                entry = self._due.pop(task_id, None)
                if entry is not None:
                    self._write(*entry)  # under the lock: cancel() waits for it

    def _write(self, task: Task, request: Any) -> None:
        try:
            task.backend.store_result(request.id, {"pid": os.getpid(), "hostname": request.hostname},
                                      states.STARTED, request=request)
            self.written += 1
        except Exception:  # noqa: BLE001 - a state report must never break the task
            logger.debug("celerynb: could not write STARTED for %s", request.id, exc_info=True)


reporter = StartedReporter()


def reports_started(task: Task) -> bool:
    """Whether celerynb writes STARTED for this task (Celery's own ``track_started`` not set)."""
    return not task.track_started and not task.ignore_result and bool(task.app.conf.task_track_started)


@contextmanager
def started_later(task: Task) -> Iterator[None]:
    """Around a task's body in a worker: schedule its STARTED, cancel it when the body ends."""
    request = task.request
    if request.called_directly or request.is_eager or not reports_started(task):
        yield
        return
    reporter.schedule(task, request)
    try:
        yield
    finally:
        reporter.cancel(request.id)
