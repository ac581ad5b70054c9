"""Eager mode: a progress display for each eager task, shown as it starts.

An eager task runs inside ``.delay()``, before the caller can hand its result to
``progress()``; polling after the fact would miss every ``update_state``. So the display is
made from Celery's ``task_prerun`` signal, and the Redis backend's PUBLISH of each state (the
monitor thread's push path) moves it while the cell is still running the task. In CI
(nothing live) it is made from ``task_postrun`` instead: one display, of the outcome.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals

last_display: Any = None


def _eager_in_cell(task: Any) -> bool:
    return task is not None and task.request.is_eager and threading.current_thread() is threading.main_thread()


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """A live display as the task starts, named (nothing is stored of it yet)."""
    global last_display
    from celerynb.config import noninteractive

    if not _eager_in_cell(task) or noninteractive():
        return
    from celerynb.display.progress import progress
    from celerynb.tracking.submitted import submitted

    request = task.request  # an eager task is never published: log it as sent, for its name
    submitted.record(task_id, task.name, repr(request.args), repr(request.kwargs))
    last_display = progress(task.AsyncResult(task_id))


def _on_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """In CI nothing is live: one display, of the outcome (nbval ignores later updates)."""
    global last_display
    from celerynb.config import noninteractive

    if not _eager_in_cell(task) or not noninteractive():
        return
    from celerynb.display.progress import progress

    last_display = progress(task.AsyncResult(task_id))


def shown_here(result: Any) -> bool:
    """Whether ``result`` is the eager task whose display this cell already shows (``.delay()``
    on a cell's last line would otherwise show a second one through the display hook)."""
    from celerynb.display._base import current_cell

    shown = last_display
    return (shown is not None and getattr(result, "id", None) in getattr(shown, "ids", ())
            and getattr(shown, "_shown_in", None) == current_cell())


def enable() -> None:
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="celerynb-eager-progress")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="celerynb-eager-outcome")


def disable() -> None:
    signals.task_prerun.disconnect(_on_prerun, dispatch_uid="celerynb-eager-progress")
    signals.task_postrun.disconnect(_on_postrun, dispatch_uid="celerynb-eager-outcome")
