"""Send a failed task again: same name, arguments and options; count its attempts.

The arguments come from the result backend's extended result (``result_extended``: name, args,
kwargs, queue), else from what this kernel published (the submit log's reprs, when they are
whole); the options from the submit log (queue, time limits, the caller's own headers). A task
registered here is sent through its own ``apply_async``, so its defaults (priority, routing,
a notebook cell's current version) apply as on the first send; any other name is sent by name
through the app (``send_task``), as a project's own workers expect.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

from celery import Celery, states
from celery.result import AsyncResult

from celerynb.tracking.snapshot import TaskSnapshot
from celerynb.tracking.submitted import submitted

#: What ``retry_failed`` sends again.
RETRYABLE = frozenset({states.FAILURE, states.REVOKED})

_lock = threading.Lock()
_attempts: dict[str, int] = {}  # new task id -> its attempt number (2, 3, ...)


class NotResubmittable(ValueError):
    """A failed task whose name or arguments are known neither to the backend nor to this kernel."""


def attempt_of(task_id: str) -> int:
    """1 for a task sent once; 2, 3, ... for the resubmissions made by :func:`resubmit`."""
    return _attempts.get(task_id, 1)


def _whole_literal(text: str | None) -> Any:
    """A published repr read back, or None when it was cut (Celery shortens long reprs)."""
    if not text:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def call_of(snapshot: TaskSnapshot) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    """``(name, args, kwargs, options)`` to send ``snapshot``'s task again.

    Raises:
        NotResubmittable: neither the backend nor this kernel knows its name and arguments.
    """
    tid = snapshot.task_id
    entry = submitted.get(tid)
    name = snapshot.name or (entry.name if entry else None)
    args, kwargs = snapshot.args, snapshot.kwargs
    if args is None and kwargs is None and entry is not None:
        args, kwargs = _whole_literal(entry.argsrepr), _whole_literal(entry.kwargsrepr)
        if entry.argsrepr and args is None or entry.kwargsrepr and kwargs is None:
            name = None  # a shortened repr: the arguments are not known exactly
    if not name or not isinstance(args or [], list | tuple) or not isinstance(kwargs or {}, dict):
        raise NotResubmittable(
            f"cannot retry task {tid}: its name and arguments are not stored (the backend keeps them with "
            "result_extended=True, as celerynb's app does) and it was not sent from this kernel; submit it again.")
    options = dict(entry.options or {}) if entry is not None else {}
    if snapshot.queue and "queue" not in options:
        options["queue"] = snapshot.queue
    return name, list(args or []), dict(kwargs or {}), options


def resubmit(app: Celery, snapshot: TaskSnapshot) -> AsyncResult:
    """Send ``snapshot``'s task again through ``app``; the new result counts one more attempt."""
    name, args, kwargs, options = call_of(snapshot)
    task = app.tasks.get(name)
    if task is not None:
        result = task.apply_async(args, kwargs, **options)
    else:
        result = app.send_task(name, args, kwargs, **options)
    with _lock:
        _attempts[result.id] = attempt_of(snapshot.task_id) + 1
    return result
