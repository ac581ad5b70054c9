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


class _Slot:
    """The tasks one thread runs whose STARTED is due (usually one), under that thread's own lock."""

    __slots__ = ("due", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.due: dict[str, tuple[float, Task, Any]] = {}  # task id -> (deadline, task, request)


class StartedReporter:
    """Writes the STARTED state of tasks that run longer than ``after`` seconds (one thread).

    Each pool thread schedules and cancels under its own lock (once per item of a batch: a lock
    shared by the pool threads made them queue behind each other); the reporter's thread takes
    each lock to look and to write, so a cancel waits for a write in progress. While tasks come,
    the thread wakes every ``after`` s at most, not once per task; after ``IDLE_AFTER`` s without
    one it sleeps until the next is scheduled."""

    IDLE_AFTER = 2.0

    def __init__(self, after: float = STARTED_AFTER) -> None:
        self.after = after
        self._cond = threading.Condition()  # the reporter thread's sleep
        self._slots: dict[int, _Slot] = {}  # by thread ident
        self._thread: threading.Thread | None = None
        self._dozing = False
        self._last_scheduled = 0.0
        self.written = 0
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """A forked pool child: the parent's thread (and its locks) are not here."""
        self._thread, self._cond, self._slots, self._dozing = None, threading.Condition(), {}, False

    def schedule(self, task: Task, request: Any) -> None:
        if self._thread is None:
            self._ensure_thread()
        ident = threading.get_ident()
        slot = self._slots.get(ident)
        if slot is None:
            slot = self._slots.setdefault(ident, _Slot())
        self._last_scheduled = now = time.monotonic()
        with slot.lock:
            slot.due[request.id] = (now + self.after, task, request)
        if self._dozing:  # otherwise it looks again within ``after``: no wake-up per task
            with self._cond:
                self._cond.notify()

    def cancel(self, task_id: str) -> None:
        """The task ends or reports its own state: no STARTED after this returns."""
        own = self._slots.get(threading.get_ident())
        if own is not None:
            with own.lock:  # waits for a write in progress
                if own.due.pop(task_id, None) is not None:
                    return
        for slot in list(self._slots.values()):  # another thread's task (``update_state(task_id=...)``)
            if slot is not own:
                with slot.lock:
                    slot.due.pop(task_id, None)

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="celerynb-started", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                soonest = self._write_due()
                if soonest is not None:
                    self._cond.wait(min(self.after, max(0.0, soonest - time.monotonic())))
                elif time.monotonic() - self._last_scheduled < self.IDLE_AFTER:
                    self._cond.wait(self.after)  # anything scheduled meanwhile is due later than that
                else:
                    self._dozing = True
                    if not any(slot.due for slot in list(self._slots.values())):  # scheduled just now?
                        self._cond.wait()
                    self._dozing = False

    def _write_due(self) -> float | None:
        """Write what is due (each under its thread's lock); the soonest deadline still ahead."""
        soonest = None
        for slot in list(self._slots.values()):
            if not slot.due:
                continue
            with slot.lock:
                now = time.monotonic()
                for task_id, (deadline, task, request) in list(slot.due.items()):
                    if deadline <= now:
                        del slot.due[task_id]
                        self._write(task, request)  # under the lock: cancel() waits for it
                    elif soonest is None or deadline < soonest:
                        soonest = deadline
        return soonest

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
