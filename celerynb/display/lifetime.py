"""Live displays belong to the cell that made them: running that cell again closes them.

A kernel-wide :class:`~celerynb.display.table.TaskTable` follows every task until it is
closed, so each re-run of ``%celery tasks --live`` used to leave one more listener and ticker
on the monitor for the rest of the session. Cells are told apart by the id the front end
sends with each execution (JupyterLab and nbclient do; IPython's ``ExecutionInfo.cell_id``).
Where there is none (a terminal), a display lives until it is closed, as before.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol


class Closable(Protocol):
    def close(self) -> None: ...


_current: str | None = None
_owned: dict[str, list[weakref.ref[Any]]] = {}


def cell_started(cell_id: str | None) -> None:
    """A cell starts running: displays its earlier runs made stop following their tasks."""
    global _current
    _current = cell_id or None
    if _current is None:
        return
    for ref in _owned.pop(_current, []):
        display = ref()
        if display is not None:
            display.close()


def cell_finished() -> None:
    """Displays made from now on (by a background thread, say) belong to no cell."""
    global _current
    _current = None


def adopt(display: Closable) -> None:
    """``display`` belongs to the cell running now (if the front end named it)."""
    if _current is None:
        return
    refs = [r for r in _owned.get(_current, []) if r() is not None]
    refs.append(weakref.ref(display))
    _owned[_current] = refs


def on_pre_run_cell(info: Any) -> None:
    """IPython's ``pre_run_cell`` event."""
    cell_started(getattr(info, "cell_id", None))


def on_post_run_cell(_result: Any) -> None:
    """IPython's ``post_run_cell`` event."""
    cell_finished()


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def register_live(display: Any) -> None:
    """``display`` follows retried tasks to their new attempt (:func:`celerynb.retry_failed`); kept
    weakly, so a display nobody holds goes away as before."""
    _live.add(display)


def live_displays() -> list[Any]:
    """Every display made in this process and still alive."""
    return list(_live)
