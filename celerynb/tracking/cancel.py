"""Cancel: stop tasks, queued or running, on every pool."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from celerynb import _compat
from celerynb.tracking.awaiting import task_ids_of
from celerynb.workers import batch, stopping

logger = logging.getLogger("celerynb.display")

#: Tasks this kernel asked to stop: until they end, displays say "cancelling" (a task inside one
#: long C call, or a worker process between SIGTERM and its exit, is still running).
_requested: set[str] = set()
_REQUESTED_MAX = 100_000


def requested(task_id: str) -> bool:
    """Whether this kernel cancelled ``task_id`` (still running means: cancelling)."""
    return task_id in _requested


def cancel_tasks(app: Celery, task_ids: list[str]) -> None:
    """Stop tasks wherever they are.

    - Queued anywhere: revoked, never run.
    - Running in a prefork child (worker processes): the child gets SIGTERM, then SIGKILL
      after a grace period (:mod:`celerynb.workers.prefork`); Celery stores REVOKED.
    - Running on celerynb's threads/solo pools (in-kernel workers, ``--pool threads`` worker
      processes of celerynb's app): the task stops at its next ``track()`` item or
      ``raise_if_cancelled()`` call, else after ``stopping.GRACE`` seconds by an exception raised
      in its thread (:mod:`celerynb.workers.stopping`); a thread inside one long C call stops
      when the call returns. Then REVOKED.
    - Items of a batched ``celerynb.map`` not yet run are stored REVOKED and skipped (the batch
      reads the cancel markers set here); the item running stops as a task does.
    """
    if not task_ids:
        return
    if len(_requested) > _REQUESTED_MAX:
        _requested.clear()
    _requested.update(task_ids)
    for tid in task_ids:  # in-kernel workers: visible at once, before the broadcast arrives
        _compat.mark_revoked(tid)
    stopping.request_stop(task_ids)
    try:
        batch.mark_cancelled(app, task_ids)
    except Exception:  # noqa: BLE001 - the backend unreachable: the broadcast below still cancels
        logger.warning("could not store the cancel markers of %d task(s)", len(task_ids), exc_info=True)
    app.control.revoke(task_ids, terminate=True, signal="SIGTERM")


def cancel(*results: Any, app: Celery | None = None) -> int:
    """Cancel tasks: queued ones never run, running ones are stopped (see :func:`cancel_tasks`).

    Args:
        results: ``AsyncResult``\\ s, a ``GroupResult``/``ResultSet``, what ``celerynb.map``
            returns, lists of them, task id strings, or a display (``progress(...)``, ``TaskTable``).
        app: the Celery app for plain ids (the results' own app, else celerynb's).

    Returns the number of tasks asked to stop (those already ended are left alone).
    """
    shown = [r for r in results if isinstance(getattr(r, "ids", None), list) and hasattr(r, "monitor")]
    ids, found_app = task_ids_of([r for r in results if r not in shown])
    for display in shown:
        ids += display.ids
        found_app = found_app or display.app
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ValueError("cancel() needs tasks: pass an AsyncResult, a GroupResult, a list of them or task ids.")
    from celerynb.tracking.monitor import get_monitor

    monitor = get_monitor(app or found_app)
    monitor.track(ids)
    monitor.read_now(ids, limit=len(ids))
    unfinished = [tid for tid in ids if not monitor.snapshot(tid).ready]
    cancel_tasks(monitor.app, unfinished)
    return len(unfinished)
