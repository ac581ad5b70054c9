"""What the Retry button of a display does, as a function: ``celerynb.retry_failed``
(Cancel's is :func:`celerynb.tracking.cancel.cancel`).

``retry_failed`` sends every FAILURE/REVOKED task again (:mod:`celerynb.tracking.resubmit`) and
tells every live display that shows one of them (:func:`.lifetime.live_displays`): its row
switches to the new task, in the same place, and reads "attempt 2".
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.result import AsyncResult, GroupResult, ResultSet

from celerynb.bulk.calls import BulkResult
from celerynb.display import lifetime
from celerynb.tracking.awaiting import task_ids_of
from celerynb.tracking.monitor import get_monitor
from celerynb.tracking.resubmit import RETRYABLE, resubmit


def _shows_tasks(value: Any) -> bool:
    return hasattr(value, "replace_tasks") and isinstance(getattr(value, "ids", None), list)


def retry_failed(results: Any, *, app: Celery | None = None) -> Any:
    """Send every task of ``results`` that ended in FAILURE or REVOKED again, with the same
    arguments and options; returns the results in the same shape and order, the old result kept
    for every task that did not fail.

    Args:
        results: an ``AsyncResult``, a list of them, a ``GroupResult``/``ResultSet`` (what
            ``celerynb.map`` returns), task id strings, or a display (``progress(...)``,
            ``TaskTable``): the display is returned, following the new attempts.
        app: the Celery app for plain id strings (the results' own app otherwise).

    Displays that show a retried task switch that row to the new attempt ("attempt 2"). An item
    of a batched ``celerynb.map`` is sent again on its own, as one normal task of the same name
    and arguments. Tasks still running, or that succeeded, are left alone; when none failed,
    nothing is sent and one line says so.

    Raises:
        TypeError: ``results`` is not results, ids or a display.
        NotResubmittable: a failed task's name or arguments are not known (nothing is sent).
    """
    if _shows_tasks(results):
        retry_ids(list(results.ids), app or results.app)
        return results
    ids, found_app = task_ids_of([results])
    if not ids:
        raise ValueError("retry_failed() needs results: pass an AsyncResult, a GroupResult or a list of them.")
    sent = retry_ids(ids, app or found_app)
    return _rebuilt(results, sent)


def retry_ids(ids: list[str], app: Celery | None) -> dict[str, AsyncResult]:
    """Resubmit the failed tasks among ``ids``; returns ``{old id: new result}`` (empty: none failed)."""
    monitor = get_monitor(app)
    unique = list(dict.fromkeys(ids))
    monitor.track(unique)
    monitor.read_now(unique, limit=len(unique))
    failed = [tid for tid in unique if monitor.snapshot(tid).state in RETRYABLE]
    if not failed:
        print(f"retry_failed: nothing to retry: none of the {len(unique)} task(s) ended in FAILURE or REVOKED.")
        return {}
    from celerynb.tracking.resubmit import call_of

    snapshots = [monitor.full_snapshot(tid) for tid in failed]
    for snap in snapshots:  # every call is known before anything is sent
        call_of(snap)
    sent = {snap.task_id: resubmit(monitor.app, snap) for snap in snapshots}
    mapping = {old: new.id for old, new in sent.items()}
    for display in lifetime.live_displays():
        if any(tid in mapping for tid in display.ids):
            display.replace_tasks(mapping)
    return sent


def _rebuilt(value: Any, sent: dict[str, AsyncResult]) -> Any:
    """``value`` with every retried result replaced by its new attempt, shape and order kept."""
    if isinstance(value, GroupResult):
        # Celery's GroupResult subscribes task by task and, after a join that raised, can read
        # the new attempts as None: celerynb's waits on the shared monitor instead.
        group = BulkResult(value.id, [], app=value.app)
        group.results = [_rebuilt(r, sent) for r in value.results]
        return group
    if isinstance(value, ResultSet):
        return ResultSet([_rebuilt(r, sent) for r in value.results], app=value.app)
    if isinstance(value, AsyncResult):
        return sent.get(value.id, value)
    if isinstance(value, str):
        new = sent.get(value)
        return new.id if new is not None else value
    if isinstance(value, list | tuple):
        return type(value)(_rebuilt(v, sent) for v in value)
    return value
