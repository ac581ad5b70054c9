"""IPython display hook: a task result as the last line of a cell shows its progress display.

``process_document.delay(...)`` alone is then enough to watch the task.
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult, ResultSet

_TYPES = (AsyncResult, ResultSet)


def _show(result: Any) -> None:
    from celerynb.display import eager
    from celerynb.display.progress import progress

    if not eager.shown_here(result):
        progress(result)


def register_display_formatters(ip: Any) -> None:
    """Make ``AsyncResult``/``GroupResult``/``ResultSet`` display as a live progress display."""
    formatter = ip.display_formatter.ipython_display_formatter
    for cls in _TYPES:
        formatter.for_type(cls, _show)


def unregister_display_formatters(ip: Any) -> None:
    """Undo :func:`register_display_formatters` (``%unload_ext``)."""
    formatter = ip.display_formatter.ipython_display_formatter
    for cls in _TYPES:
        if formatter.type_printers.get(cls) is _show:
            formatter.pop(cls, None)
