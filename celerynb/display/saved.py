"""What a display leaves in a saved notebook so that it can come back after a kernel restart.

Celery keeps every task's state in its result backend; a display needs only its task ids to be
rebuilt. Each display's output carries them in its metadata (``celerynb`` key), which
Jupyter saves with the notebook and no renderer shows; :mod:`celerynb.notebook.reattach`
reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

#: Key of the output metadata.
KEY = "celerynb"
#: At most this many ids per display are kept (36 bytes each: 10,000 are ~400 kB of notebook).
MAX_IDS = 10_000


def output_metadata(kind: str, task_ids: list[str], app: Celery | None, ended: bool) -> dict[str, Any]:
    """The metadata of one display's output: its kind, task ids, app name and whether it had ended."""
    return {KEY: {"display": kind, "task_ids": list(task_ids[:MAX_IDS]), "total": len(task_ids),
                  "app": getattr(app, "main", None), "ended": ended}}


@dataclass
class SavedDisplay:
    """A display found in a saved notebook."""

    kind: str  # "progress", "table" or "tree"
    task_ids: list[str]
    total: int
    app: str | None
    ended: bool
    cell: int  # its cell's position among the code cells, from 1
    #: A canvas tree's shape of ids (``CanvasNode.to_dict``), for a ``"tree"`` display.
    tree: dict[str, Any] | None = None


def saved_displays(notebook: dict[str, Any]) -> list[SavedDisplay]:
    """Every celerynb display of a notebook (nbformat 4 JSON), in cell order, the last output of
    each display only (a live display's updates replace one output)."""
    found: list[SavedDisplay] = []
    code_cells = [c for c in notebook.get("cells", []) if c.get("cell_type") == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for output in cell.get("outputs", []):
            meta = (output.get("metadata") or {}).get(KEY)
            if not isinstance(meta, dict) or not isinstance(meta.get("task_ids"), list):
                continue
            ids = [str(t) for t in meta["task_ids"] if isinstance(t, str)]
            if ids:
                found.append(SavedDisplay(kind=str(meta.get("display") or "progress"), task_ids=ids,
                                          total=int(meta.get("total") or len(ids)), app=meta.get("app"),
                                          ended=bool(meta.get("ended")), cell=number,
                                          tree=meta.get("tree") if isinstance(meta.get("tree"), dict) else None))
    return found
