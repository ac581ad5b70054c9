"""Eager mode: a progress display for each eager task, shown as it starts.

An eager task runs inside ``.delay()``, before the caller can hand its result to
``progress()``; polling after the fact would miss every ``update_state``. So the display is
made from Celery's ``task_prerun`` signal, and the Redis backend's PUBLISH of each state (the
monitor thread's push path) moves it while the cell is still running the task.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals

last_display: Any = None


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    global last_display
    if task is None or not task.request.is_eager or threading.current_thread() is not threading.main_thread():
        return
    from celerynb.display.progress import progress

    last_display = progress(task.AsyncResult(task_id))


def enable() -> None:
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="celerynb-eager-progress")


def disable() -> None:
    signals.task_prerun.disconnect(_on_prerun, dispatch_uid="celerynb-eager-progress")
