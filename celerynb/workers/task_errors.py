"""A failed task's own traceback on the exception its ``.get()`` raises.

Celery re-raises a task's exception in the caller with the caller's frames only (its own and
vine's), so the line of the user's code that failed is nowhere on screen. The worker stored that
traceback with the result: its frames outside Celery and celerynb are added to the exception as
a note (PEP 678), printed right under the error in a notebook, a terminal and a log alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

#: Called with each noted exception: the notebook layer makes IPython show the caller's lines and
#: then the task's, without Celery's and vine's in between (:mod:`celerynb.notebook.tracebacks`).
on_noted: list[Callable[[BaseException], None]] = []

#: Frames of these packages are the machinery around a task, not the task (celerynb's example
#: tasks, ``celerynb/workers/tasks.py``, are tasks).
_MACHINERY = re.compile(r'File "[^"]*[/\\](?:celery|kombu|vine|billiard|celerynb(?![/\\]workers[/\\]tasks\.py))[/\\"]')


#: The one line an interrupted ``.get()`` adds: the task was not stopped, and how to stop it.
INTERRUPTED_GET = "1 task keeps running; cancel it with celerynb.cancel(result) or the Cancel button"


def own_frames(traceback_text: str) -> str:
    """The frames of a formatted traceback that are not Celery's or celerynb's, as text."""
    frames: list[list[str]] = []
    for line in traceback_text.rstrip().splitlines():
        if line.startswith("  File "):
            frames.append([line])
        elif line.startswith("    ") and frames:
            frames[-1].append(line)
    kept = [frame for frame in frames if not _MACHINERY.search(frame[0])]
    return "\n".join(line for frame in kept for line in frame)


def add_task_traceback(result: Any, exc: BaseException) -> None:
    """Note the worker's frames of ``result``'s failure on ``exc`` (once per exception); on a
    ``KeyboardInterrupt`` (the kernel's stop button during ``.get()``), that the task keeps running."""
    if getattr(exc, "_celerynb_noted", False) or not hasattr(exc, "add_note"):
        return
    if isinstance(exc, KeyboardInterrupt):
        exc.add_note(INTERRUPTED_GET)
        exc._celerynb_noted = True  # type: ignore[attr-defined]
        return
    try:
        text = result.traceback
    except Exception:  # noqa: BLE001 - a note is a help, never a new failure
        return
    frames = own_frames(text) if isinstance(text, str) else ""
    if not frames:
        return
    name = getattr(result, "name", None) or "the task"
    exc.add_note(f"Raised in {name} ({result.id}) on its worker:\n{frames}")
    exc._celerynb_noted = True  # type: ignore[attr-defined]
    for hook in on_noted:
        hook(exc)
