"""A failed task's ``.get()`` in IPython: the caller's own lines, then the task's.

Celery re-raises a task's exception through its result and vine's promise: five frames of
machinery between the user's line and the error, and the task's frames nowhere. The note of
:mod:`celerynb.workers.task_errors` carries the task's frames; here IPython's
``_render_traceback_`` hook (what ipyparallel's remote errors use) leaves the machinery out, so
the cell shows the line that called ``.get()``, the error, and where the task raised it.
"""

from __future__ import annotations

import re
import types
from typing import Any

from celerynb.workers import task_errors

#: Where the user's frames end: the first frame in one of these packages.
_MACHINERY = re.compile(r"[/\\](?:celery|vine|kombu|billiard|celerynb)[/\\]")


def enable() -> None:
    if _attach not in task_errors.on_noted:
        task_errors.on_noted.append(_attach)


def disable() -> None:
    if _attach in task_errors.on_noted:
        task_errors.on_noted.remove(_attach)


def _attach(exc: BaseException) -> None:
    exc._render_traceback_ = lambda: render(exc)  # type: ignore[attr-defined]


def callers_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback up to (not into) the first frame of Celery, vine, kombu or celerynb."""
    kept: list[types.TracebackType] = []
    while tb is not None and not _MACHINERY.search(tb.tb_frame.f_code.co_filename):
        kept.append(tb)
        tb = tb.tb_next
    chain = None
    for frame_tb in reversed(kept):
        chain = types.TracebackType(chain, frame_tb.tb_frame, frame_tb.tb_lasti, frame_tb.tb_lineno)
    return chain


def render(exc: BaseException) -> list[str]:
    """IPython's structured traceback of ``exc`` with the machinery's frames left out.

    Raises (and IPython then shows its usual traceback) outside IPython or when the caller's
    frames cannot be told apart."""
    from IPython import get_ipython

    shell: Any = get_ipython()
    tb = callers_frames(exc.__traceback__)
    if shell is None or tb is None:
        raise LookupError("no IPython shell or no caller's frame")
    return shell.InteractiveTB.structured_traceback(type(exc), exc, tb)
