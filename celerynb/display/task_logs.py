"""``celerynb.logs(result)``: the output a task wrote while it ran, and the log panes of tables.

Worker-side capture (:mod:`celerynb.workers.capture`) stores each task's stdout, stderr and
logging records next to its result; this reads them back. Tables read them only for the rows
they show, finished ones once, running ones at most every :data:`REFRESH_EVERY` s, and check
the size before fetching a text again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celerynb.rendering import render
from celerynb.tracking.awaiting import task_ids_of
from celerynb.workers import task_logs

logger = logging.getLogger("celerynb.display")

#: Lines shown in a pane (the last ones); the full text is in ``celerynb.logs(result).text``.
PANE_LINES = 200
#: Seconds between two reads of a running task's logs by a table.
REFRESH_EVERY = 1.0
NOT_CAPTURED = "no logs: tasks of this app are not celerynb's (only celerynb's app captures each task's output)"
NO_REDIS = "no logs: each task's output is stored on Redis result backends only"


@dataclass(frozen=True)
class TaskLogs:
    """A task's captured output: ``repr`` is the text, ``_repr_html_`` a foldable pane."""

    task_id: str
    text: str = ""
    level: int = 0
    written: int = 0
    note: str = ""  # why there can be no logs (another app, another backend)

    @classmethod
    def of(cls, stored: task_logs.StoredLogs | None, task_id: str, note: str = "") -> TaskLogs:
        if stored is None:
            return cls(task_id, note=note)
        return cls(task_id, stored.text, stored.level, stored.written, note)

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @property
    def dropped(self) -> int:
        """Bytes written that the cap (the last 64 KB are kept) dropped."""
        return max(0, self.written - len(self.text.encode("utf-8", "replace")))

    @property
    def marker(self) -> str:
        """``danger`` (an ERROR was logged), ``warning`` (a WARNING, or stderr output) or ``""``."""
        return task_logs.StoredLogs(self.task_id, self.text, self.level, self.written).marker

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        if self.note:
            return self.note
        return self.text.rstrip("\n") if self.text else "(this task wrote no output)"

    def _repr_html_(self) -> str:
        return render("task_logs", pane=pane(self, opened=True), note=repr(self))


def captures_logs(app: Celery) -> bool:
    """Whether ``app``'s tasks capture their output (celerynb's ``NotebookTask`` does)."""
    return bool(getattr(app.Task, "captures_output", False))


def _note(app: Celery) -> str:
    if not captures_logs(app):
        return NOT_CAPTURED
    return "" if task_logs.supported(app.backend) else NO_REDIS


def logs(result: Any, app: Celery | None = None) -> TaskLogs | dict[str, TaskLogs]:
    """The output of one task (an ``AsyncResult`` or id), or ``{id: TaskLogs}`` for several
    (a list, a ``GroupResult``): what it printed, wrote to stderr or fds 1/2, and logged.

    Raises:
        TypeError: ``result`` is none of those.
    """
    single = isinstance(result, str) or not isinstance(result, list | tuple) and not hasattr(result, "results")
    ids, found = task_ids_of([result])
    if app is None:
        from celerynb.cluster.apps import current_app

        app = found or current_app()
    note = _note(app)
    stored = {} if note else task_logs.read(app.backend, ids)
    found_logs = {tid: TaskLogs.of(stored.get(tid), tid, note) for tid in ids}
    return found_logs[ids[0]] if single and ids else found_logs


def pane(entry: TaskLogs | None, opened: bool = False) -> dict[str, Any] | None:
    """What a template draws for one task's logs (None: nothing written, nothing to draw)."""
    if entry is None or not entry.text:
        return None
    lines = entry.lines
    shown = lines[-PANE_LINES:]
    return {"lines": len(lines), "text": "\n".join(shown), "last": shown[-1][:100] if shown else "",
            "hidden": len(lines) - len(shown), "dropped": entry.dropped, "marker": entry.marker,
            "label": {"danger": "errors", "warning": "warnings"}.get(entry.marker, ""), "open": opened}


class LogCache:
    """The logs of a table's rows: finished tasks read twice (at their end and a refresh later),
    running ones re-read only when their size changed, never more than every :data:`REFRESH_EVERY` s."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.enabled = not _note(app)
        self.entries: dict[str, TaskLogs] = {}
        self.final: set[str] = set()
        self.ended_at: dict[str, float] = {}
        self.last_read = 0.0

    def refresh(self, running: list[str], ended: list[str], force: bool = False) -> bool:
        """Read what may have changed; True when some row's logs did."""
        if not self.enabled or not (force or time.monotonic() - self.last_read >= REFRESH_EVERY):
            return False
        self.last_read = time.monotonic()
        ended = [t for t in ended if t not in self.final]
        backend = self.app.backend
        try:
            sizes = task_logs.read_sizes(backend, running) if running else {}
            stale = [t for t, (n, _) in sizes.items() if t not in self.entries or self.entries[t].written != n]
            fresh = task_logs.read(backend, stale + ended)
        except Exception:  # noqa: BLE001 - a table without logs for a moment, not a broken table
            logger.debug("celerynb: could not read task logs", exc_info=True)
            return False
        now = time.monotonic()
        for tid in ended:  # read again once a refresh later: output stored after its end state
            if now - self.ended_at.setdefault(tid, now) >= REFRESH_EVERY:
                self.final.add(tid)
                del self.ended_at[tid]
        changed = False
        for tid, stored in fresh.items():
            entry = TaskLogs.of(stored, tid)
            changed = changed or self.entries.get(tid) != entry
            self.entries[tid] = entry
        return changed

    def get(self, task_id: str) -> TaskLogs | None:
        return self.entries.get(task_id)

    def forget(self, task_ids: list[str]) -> None:
        for tid in task_ids:
            self.entries.pop(tid, None)
            self.final.discard(tid)
            self.ended_at.pop(tid, None)
