"""``%celery reattach``: the notebook's displays again, after a kernel restart or a reopen.

A kernel restart loses every live display, but not the tasks: their states are in the result
backend, and each display's saved output holds its task ids (:mod:`celerynb.display.saved`).
This reads the saved notebook, follows those ids again and shows each display anew, with the
current states. Tasks of a display that had ended but whose results are gone say so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celerynb.display.saved import SavedDisplay, saved_displays
from celerynb.tracking.monitor import get_monitor
from celerynb.tracking.snapshot import EXPIRED_INFO, LOST, TaskSnapshot


class ReattachError(ValueError):
    """The notebook to read could not be found or read."""


def notebook_path(user_ns: dict[str, Any] | None = None) -> Path | None:
    """The notebook this kernel runs, as Jupyter Server tells kernels (``JPY_SESSION_NAME``)."""
    name = (user_ns or {}).get("__session__") or os.environ.get("JPY_SESSION_NAME")
    if not name:
        return None
    path = Path(name)
    if path.is_absolute() and path.is_file():
        return path
    local = Path.cwd() / path.name  # a path from the server's root: the kernel runs in the notebook's folder
    return local if local.is_file() else None


def read_displays(path: Path) -> list[SavedDisplay]:
    if not path.is_file():
        raise ReattachError(f"{path} does not exist: pass the path of a saved .ipynb.")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReattachError(f"cannot read {path}: {exc}.") from None
    return saved_displays(notebook)


def reattach(path: Path, app: Any = None) -> list[Any]:
    """Show every celerynb display saved in ``path`` again, following its tasks; returns them."""
    from IPython.display import display

    from celerynb.display.progress import progress
    from celerynb.display.table import TaskTable

    found = read_displays(path)
    shown = []
    for saved in found:
        monitor = get_monitor(app)
        monitor.track(saved.task_ids)
        monitor.read_now(saved.task_ids, limit=len(saved.task_ids))
        if saved.ended:  # ended when saved: a PENDING id now is a result the backend no longer keeps
            for tid in saved.task_ids:
                if monitor.snapshot(tid).state == "PENDING":
                    monitor.seed(TaskSnapshot(task_id=tid, state=LOST, info=EXPIRED_INFO))
        more = f" (the first {len(saved.task_ids):,} of {saved.total:,} kept)" if saved.total > len(saved.task_ids) else ""
        display({"text/plain": f"cell {saved.cell}: {saved.kind} of {len(saved.task_ids):,} task(s){more}"}, raw=True)
        if saved.kind == "table":
            table = TaskTable(saved.task_ids, app=monitor.app)
            display(table)
            shown.append(table)
        elif saved.kind == "tree" and saved.tree is not None:
            shown.append(progress(_tree(saved), app=monitor.app))
        else:  # a progress display, or a tree too big to have kept its shape: its ids, flat
            shown.append(progress(saved.task_ids, app=monitor.app))
    return shown


def _tree(saved: SavedDisplay) -> Any:
    """The saved tree's shape, or its ids flat when the shape cannot be read."""
    from celerynb.tracking.canvas import CanvasNode

    try:
        return CanvasNode.from_dict(saved.tree)
    except (ValueError, KeyError, TypeError):
        return saved.task_ids
