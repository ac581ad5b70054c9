"""Stopping a running task on a threads or solo pool: cancel and time limits.

Celery can stop a running task only by killing the process it runs in (prefork). The in-kernel
workers run tasks in threads of the kernel, so a revoke was only a flag that ``track()`` and
``raise_if_cancelled()`` read. Here a watchdog thread follows the tasks our pools run:

- a cancelled task gets ``GRACE`` seconds to stop on its own (its next ``track()`` item), then
  :class:`TaskStopped` is raised in its thread (``PyThreadState_SetAsyncExc``, the mechanism
  behind ``KeyboardInterrupt`` in threads); it ends REVOKED with the reason and the thread takes
  the next task;
- a soft time limit raises ``SoftTimeLimitExceeded`` in the task, as prefork's SIGUSR1 does;
- a hard time limit stops the task the same way and stores ``TimeLimitExceeded`` (FAILURE).

An exception is raised only into a thread that is inside that task's body, under the lock the
thread takes to leave it, so nothing lands in Celery's own bookkeeping or in the next task.
That lock is the thread's own (``_Running.lock``): entering and leaving a body, once per item
of a batch, never waits for another pool thread (one lock shared by the pool threads, taken
four times per item, made them queue behind each other and doubled a map's CPU per item). A
thread blocked in one long C call (``time.sleep(60)``, a socket read) receives it when the call
returns (:func:`stop_raised`); meanwhile the displays say "cancelling".
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, Terminated

from celerynb import _compat

logger = logging.getLogger("celerynb.worker")

#: Seconds a cancelled task has to stop by itself before it is stopped by force.
GRACE = 0.5
#: How often the watchdog looks for cancels that arrived by broadcast, while tasks run.
TICK = 0.05
#: A task that swallowed :class:`TaskStopped` (``except BaseException``) gets it again this often.
REPEAT = 1.0
#: Seconds without a running task after which the watchdog stops ticking until the next task.
#: While it ticks, a task starting is not a wake-up: one less thread switch per task.
IDLE_AFTER = 2.0


class TaskStopped(BaseException):  # noqa: N818 - named for what happened, as KeyboardInterrupt
    """Raised in a task's thread to stop it. A BaseException: ``except Exception`` does not stop it."""


@dataclass
class _Running:
    """One task in one pool thread."""

    thread: int
    started: float
    soft_limit: float | None
    hard_limit: float | None
    task_id: str | None = None
    in_body: bool = False
    stop_at: float | None = None  # when the forced stop is due (cancel)
    reason: str | None = None  # "cancelled" or "time limit": set once the stop is raised
    raised_at: float | None = None
    soft_raised: bool = False
    #: Taken by the thread to enter and leave a body, by the watchdog to look and raise (after
    #: ``_lock``, never before it): a C lock, taking it is one call an exception cannot split.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_lock = threading.Lock()  # guards _running and the watchdog's sleep; a run's own lock is taken after it
_wake = threading.Condition(_lock)
_running: dict[int, _Running] = {}  # by thread ident
_local = threading.local()
_watchdog: threading.Thread | None = None
_dozing = False  # the watchdog waits for a task without ticking: the next one must wake it


def stop_raised(task_id: str) -> bool:
    """True once a stop was raised in the thread running ``task_id`` and that thread has not
    left the task yet (it is inside a call that has to return first)."""
    with _lock:
        runs = list(_running.values())
    return any(r.task_id == task_id and r.in_body and r.reason for r in runs)


def request_stop(task_ids: Iterable[str]) -> None:
    """Stop these tasks if they run in this process (the revoke itself is recorded by the caller)."""
    wanted = set(task_ids)
    with _wake:
        now = time.monotonic()
        for run in _running.values():
            with run.lock:
                if run.task_id in wanted and run.stop_at is None:
                    run.stop_at = now + GRACE
        _wake.notify()


def apply_target(target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                 callback: Callable[..., Any] | None = None, accept_callback: Callable[..., Any] | None = None,
                 timeout_callback: Callable[..., Any] | None = None, soft_timeout: float | None = None,
                 timeout: float | None = None, **_: Any) -> None:
    """Celery's ``apply_target`` for a pool thread, with the task stoppable and its limits enforced."""
    from celery.concurrency.base import apply_target as celery_apply_target

    started = time.monotonic()
    run = _Running(threading.get_ident(), started, started + soft_timeout if soft_timeout else None,
                   started + timeout if timeout else None)
    _local.run = run
    with _wake:
        _running[run.thread] = run
        if _dozing:
            _wake.notify()
    _ensure_watchdog()
    try:
        celery_apply_target(target, args, kwargs, callback, accept_callback, propagate=(TaskStopped,))
    except TaskStopped:
        _report_stopped(run, callback, timeout_callback, timeout)
    finally:
        _leave(run, forget=True)


def _report_stopped(run: _Running, callback: Callable[..., Any] | None, timeout_callback: Callable[..., Any] | None,
                    timeout: float | None) -> None:
    """Let Celery's request finish the stopped task as it does for prefork: REVOKED, or FAILURE on a time limit."""
    logger.warning("task %s stopped by force (%s)", run.task_id, run.reason)
    if run.reason == "time limit" and timeout_callback is not None:
        timeout_callback(False, timeout)
        return
    if callback is not None:
        try:
            raise Terminated("cancelled: stopped by force")
        except Terminated:
            callback((1, ExceptionInfo(), time.monotonic() - run.started))


def _leave(run: _Running, forget: bool = False) -> None:
    """Leave the task body: no stop can be raised into this thread from now on."""
    while True:
        try:
            with run.lock:
                run.in_body = False
                if run.raised_at is not None:  # one raised but not delivered yet: withdrawn
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(run.thread), None)
            if forget:
                with _lock:
                    _running.pop(run.thread, None)
            return
        except TaskStopped:  # raised just before the lock was taken: leave anyway
            continue


@signals.task_prerun.connect(weak=False)
def _enter_body(task_id: str | None = None, **_: Any) -> None:
    run = getattr(_local, "run", None)
    if run is None or run.thread != threading.get_ident():
        return
    revoked = bool(task_id) and _compat.is_revoked(task_id)
    with run.lock:
        run.task_id = task_id
        run.in_body = True
        if revoked:
            run.stop_at = time.monotonic() + GRACE
    if revoked:
        with _wake:
            _wake.notify()


@signals.task_postrun.connect(weak=False)
def _leave_body(**_: Any) -> None:
    leave_body()


def leave_body() -> None:
    """The running task's own code has returned (called by celerynb's task class and at postrun)."""
    run = getattr(_local, "run", None)
    if run is not None and run.thread == threading.get_ident() and run.in_body:
        _leave(run)


def _ensure_watchdog() -> None:
    global _watchdog
    if _watchdog is not None and _watchdog.is_alive():
        return
    with _lock:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=_watch, name="celerynb-stop-watchdog", daemon=True)
            _watchdog.start()


def _watch() -> None:
    global _dozing
    last_busy = time.monotonic()
    while True:
        with _wake:
            if not _running and time.monotonic() - last_busy >= IDLE_AFTER:
                _dozing = True
                _wake.wait()
                _dozing = False
            else:
                _wake.wait(TICK)
            now = time.monotonic()
            if _running:
                last_busy = now
            for run in list(_running.values()):
                with run.lock:
                    if run.in_body:
                        _check(run, now)


def _check(run: _Running, now: float) -> None:
    """Called under ``_lock`` and the run's own lock, for a thread inside a task body."""
    if run.stop_at is None and run.task_id and _compat.is_revoked(run.task_id):
        run.stop_at = now + GRACE  # a cancel that arrived by broadcast
    if run.reason is not None:
        if now - run.raised_at >= REPEAT:  # swallowed: again
            _raise_in(run, TaskStopped, now)
        return
    if run.hard_limit is not None and now >= run.hard_limit:
        run.reason = "time limit"
        _raise_in(run, TaskStopped, now)
    elif run.stop_at is not None and now >= run.stop_at:
        run.reason = "cancelled"
        _raise_in(run, TaskStopped, now)
    elif run.soft_limit is not None and now >= run.soft_limit and not run.soft_raised:
        run.soft_raised = True
        _raise_in(run, SoftTimeLimitExceeded, now)


def _raise_in(run: _Running, exc_type: type[BaseException], now: float) -> None:
    run.raised_at = now
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(run.thread), ctypes.py_object(exc_type))
