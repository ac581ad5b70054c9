"""``celerynb.TaskTable``: a live table of given results, or of every task this kernel submits.

Rows come from the shared monitor (no polling of its own) and the submit log (names and
argument reprs as published). A shown table is plain HTML that the monitor's ticker replaces
(``update_display_data``) at most twice a second, so submitting thousands of tasks with a table
on screen costs almost nothing, and a saved notebook keeps its last picture. Its HTML comes from
an autoescaped template (``templates/task_table.html.j2``).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from celerynb.display import _views, lifetime, saved
from celerynb.display._base import attached_to, cancel_tasks, current_parent
from celerynb.display.task_logs import LogCache, pane
from celerynb.rendering import render
from celerynb.tracking import cancel as cancelling
from celerynb.tracking import canvas
from celerynb.tracking.awaiting import seed_eager, task_ids_of
from celerynb.tracking.monitor import TaskSnapshot, get_monitor
from celerynb.tracking.resubmit import RETRYABLE, attempt_of
from celerynb.tracking.submitted import enable_submit_log, submitted

COLUMNS = ("id", "name", "state", "progress", "args", "worker", "started", "runtime", "result")
#: Also in :meth:`TaskTable.rows` and ``to_dataframe()``: the workflow a task belongs to.
WORKFLOW_COLUMNS = ("parent_id", "root_id")
DATA_COLUMNS = COLUMNS + WORKFLOW_COLUMNS
#: Columns sorted largest first unless told otherwise: the newest, the longest, the furthest.
DESCENDING_FIRST = ("progress", "started", "runtime")
#: States of a task that runs: its runtime counts up (queued tasks have none yet).
RUNNING = ("STARTED", "PROGRESS", "RETRY")
REFRESH_EVERY = 0.5


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _workflow_of(snap: TaskSnapshot) -> tuple[str | None, str | None]:
    """(parent_id, root_id) of a row: see :class:`TaskTable`."""
    known = canvas.workflows.get(snap.task_id)
    if known is None:
        return snap.parent_id, snap.root_id or (snap.task_id if snap.parent_id is None else None)
    return snap.parent_id or known[0], known[1]


def _display_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of :meth:`TaskTable.rows` with its times as shown: a time of day and a duration."""
    started, runtime = row["started"], row["runtime"]
    return dict(row, style=row["_style"], fill=row["_fill"], logs=pane(row["_logs"]), attempt=row["_attempt"],
                started=time.strftime("%H:%M:%S", time.localtime(started)) if started else "",
                runtime=_views.format_duration(runtime) if runtime is not None else "")


class TaskTable:
    """Tasks with their state, progress, arguments, worker, timing and result or error.

    Args:
        results: results/ids to show; None shows every task submitted from this kernel
            (the most recent ``limit``), new ones included as they are sent.
        states: only show tasks in these states (e.g. ``["FAILURE"]``).
        sort: column to sort by (one of ``COLUMNS``); None keeps the order of submission, so
            rows never move while tasks run.
        descending: sort from the largest value; by default for ``progress``, ``started`` and
            ``runtime`` (newest, longest first) and not for the other columns.
        limit: at most this many rows are rendered.
        app: the Celery app (celerynb's by default).
        root: only show the tasks of this workflow (a ``root_id``).

    A chain, group or chord result (or signature, sent now) shows one row per task of it. Rows
    carry ``parent_id`` and ``root_id`` (in :meth:`rows`, ``to_dataframe()``, ``sort=``): for
    a workflow sent or followed by this kernel, ``root_id`` is the id of its result (what
    ``apply_async`` returned) and ``parent_id`` the id of the chain/group/chord holding the task,
    until the task stored Celery's own ``parent_id`` (the task that sent it); for other tasks,
    what the backend stored (extended results; ``root_id`` from celerynb's app).
    """

    def __init__(self, results: Any = None, *, states: list[str] | None = None, sort: str | None = None,
                 descending: bool | None = None, limit: int = 200, app: Celery | None = None,
                 root: str | None = None) -> None:
        enable_submit_log()
        self.kernel_wide = results is None
        self.root = root
        found_app = None
        ids: list[str] = []
        if canvas.is_canvas(results):
            tree, results = canvas.tree_of(results, app)
            ids, found_app = tree.leaf_ids(), getattr(results, "app", None)
        elif not self.kernel_wide:
            ids, found_app = task_ids_of(results if isinstance(results, list | tuple) else [results])
            seed_eager(results if isinstance(results, list | tuple) else [results], app or found_app)
        self.monitor = get_monitor(app or found_app)
        self.app = self.monitor.app
        self.ids: list[str] = list(dict.fromkeys(ids))
        self._shown: set[str] = set(self.ids)  # the ids of ``ids``, for O(1) membership
        self.limit = limit
        self._seen_count = 0
        self._started: dict[str, float] = {}
        self._ended: dict[str, float] = {}
        self.html = ""  # the picture last shown
        self._live = False  # shown in a live front end: redrawn by the monitor's ticker
        self._display_id: str | None = None
        self._parent: dict | None = None
        self._dirty = True
        self._logs = LogCache(self.app)  # each row's captured output (celerynb.logs)
        self.filter(states)
        self.sort(sort, descending)
        self._remove_listener = self.monitor.add_listener(self._on_change, None if self.kernel_wide else self.ids)
        self._remove_ticker = self.monitor.add_ticker(self._on_tick, REFRESH_EVERY)
        lifetime.adopt(self)  # a re-run of its cell closes it
        lifetime.register_live(self)  # follows retry_failed to the new attempts
        self._actions: Any = None  # the Cancel / Retry failed buttons under a live table
        self._pull_submitted()
        if self.ids:
            self.monitor.track(self.ids)
        # The first picture shows what is stored now, not PENDING for tasks that already ended.
        self.monitor.read_now(self._visible_ids())
        self._read_logs(force=True)

    # -- configuration -------------------------------------------------------------------
    def filter(self, states: list[str] | str | None = None) -> TaskTable:
        """Show only tasks in ``states`` (None: all)."""
        if isinstance(states, str):
            states = [states]
        self.states = {s.upper() for s in states} if states else None
        self._dirty = True
        return self

    def sort(self, column: str | None = None, descending: bool | None = None) -> TaskTable:
        """Sort rows by ``column`` (None: order of submission); see the class docstring."""
        if column is not None and column not in DATA_COLUMNS:
            raise ValueError(f"Unknown column {column!r}: sort by one of {', '.join(DATA_COLUMNS)}, or None.")
        if descending is None:
            descending = column in DESCENDING_FIRST
        self.sort_column, self.descending = column, descending
        self._dirty = True
        return self

    def close(self) -> None:
        self._remove_listener()
        self._remove_ticker()

    # -- actions ---------------------------------------------------------------------------
    def retry_failed(self) -> TaskTable:
        """Send the table's failed and cancelled tasks again (see :func:`celerynb.retry_failed`);
        their rows follow the new attempts."""
        from celerynb.display.actions import retry_failed

        return retry_failed(self)

    def cancel(self) -> None:
        """Cancel the unfinished tasks the table shows (as ``celerynb.progress``'s Cancel does)."""
        cancel_tasks(self.app, [tid for tid in self._visible_ids() if not self.monitor.snapshot(tid).ready])

    def replace_tasks(self, mapping: dict[str, str]) -> None:
        """Show ``mapping[old]`` in the row of each ``old`` task (its retry)."""
        ids = [mapping.get(tid, tid) for tid in self.ids]
        if ids == self.ids:
            return
        new = [tid for tid in ids if tid not in self._shown]
        self.ids = ids
        self._shown = set(ids)
        if not self.kernel_wide:
            self._remove_listener()
            self._remove_listener = self.monitor.add_listener(self._on_change, self.ids)
        self.monitor.track(new)
        self._dirty = True

    def counts_to_act_on(self) -> tuple[int, int]:
        """(unfinished, failed or cancelled) among the shown tasks: what the two buttons would touch."""
        unfinished = failed = 0
        for tid in self._visible_ids():
            snap = self.monitor.snapshot(tid)
            unfinished += not snap.ready
            failed += snap.state in RETRYABLE
        return unfinished, failed

    # -- data ------------------------------------------------------------------------------
    def _pull_submitted(self) -> None:
        if not self.kernel_wide:
            return
        new, self._seen_count = submitted.since(self._seen_count)
        new = [tid for tid in new if tid not in self._shown]  # a retry already took its row
        if new:
            self.ids.extend(new)
            self._shown.update(new)
            if len(self.ids) > submitted.maxlen:
                dropped = self.ids[: len(self.ids) - submitted.maxlen]
                del self.ids[: len(dropped)]
                self._shown.difference_update(dropped)
                for tid in dropped:  # what the table remembers stays bounded too
                    self._started.pop(tid, None)
                    self._ended.pop(tid, None)
                self._logs.forget(dropped)
            # Only the newest ``limit`` tasks are rendered, so only they are followed: a
            # 5,000-task burst then costs the monitor a few hundred subscriptions, not 5,000.
            self.monitor.track(new[-self.limit:])
            self._dirty = True

    def _on_change(self, snap: TaskSnapshot) -> None:
        if snap.task_id not in self._shown:
            return  # a kernel-wide table hears every task: only its own are remembered
        now = time.time()
        if snap.state in RUNNING or (snap.state not in ("PENDING", "RECEIVED") and not snap.ready):
            self._started.setdefault(snap.task_id, now)
        if snap.ready:
            self._ended.setdefault(snap.task_id, now)
        self._dirty = True

    def _visible_ids(self) -> list[str]:
        return self.ids[-self.limit:] if self.kernel_wide else self.ids

    def _times(self, snap: TaskSnapshot) -> tuple[float | None, float | None]:
        """(started, runtime): as the worker stored them, else as seen here; none while queued."""
        tid = snap.task_id
        started = snap.started or self._started.get(tid)
        if snap.ready:
            runtime = snap.runtime
            if runtime is None and started and tid in self._ended:
                runtime = self._ended[tid] - started
            return started, runtime
        return started, (time.time() - started if started else None)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per shown task (filtered, sorted, at most ``limit``), values as plain data."""
        rows = []
        for tid in self._visible_ids():
            snap = self.monitor.snapshot(tid)
            if self.states is not None and snap.state not in self.states:
                continue
            parent_id, root_id = _workflow_of(snap)
            if self.root is not None and root_id != self.root:
                continue
            entry = submitted.get(tid)
            attempt = attempt_of(tid)
            view = _views.task_view(snap, 0.0, snap.name or (entry.name if entry else None), attempt)
            started, runtime = self._times(snap)
            if snap.state == "SUCCESS":
                result = "(large result: read it with .get())" if snap.trimmed else _short(snap.info)
            elif view.error:
                result = _short(view.error)
            else:  # a cancelled task still running (in a long call, its process not gone yet)
                result = "cancelling" if not snap.ready and cancelling.requested(tid) else ""
            if snap.args is not None or snap.kwargs is not None:
                args = _views.call_arguments(snap.args, snap.kwargs)
            else:
                args = _views.call_arguments(entry.argsrepr, entry.kwargsrepr) if entry else ""
            rows.append({
                "id": tid, "name": view.name, "state": snap.state, "progress": view.percent,
                "args": args, "worker": snap.worker or "",
                "started": started, "runtime": runtime, "result": result, "_style": view.bar_style, "_fill": view.fill,
                "parent_id": parent_id, "root_id": root_id,
                "_logs": self._logs.get(tid),
                "_attempt": attempt,
            })
        key = self.sort_column
        if key is None:
            return (rows[::-1] if self.descending else rows)[: self.limit]
        rows.sort(key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0), reverse=self.descending)
        if self.descending:  # keep rows without a value last either way
            rows.sort(key=lambda r: r[key] is None)
        return rows[: self.limit]

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("TaskTable.to_dataframe() needs pandas: pip install pandas.") from None
        return pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in self.rows()],
                            columns=list(DATA_COLUMNS))

    # -- rendering -------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        return render("task_table", rows=[_display_row(r) for r in self.rows()], total=len(self.ids),
                      states=sorted(self.states or ()), columns=COLUMNS)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for tid in self.ids:
            state = self.monitor.snapshot(tid).state
            counts[state] = counts.get(state, 0) + 1
        summary = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        retried = [attempt_of(tid) for tid in self.ids if attempt_of(tid) > 1]
        if retried:
            summary += f"; {len(retried)} sent again (attempt {max(retried)})"
        return f"<TaskTable {len(self.ids)} tasks{': ' + summary if summary else ''}>"

    def _wait_for_rows(self) -> None:
        """Until the shown tasks end (at most the default wait timeout: CI must not hang)."""
        from celerynb.config import default_wait_timeout

        try:
            self.monitor.wait(self._visible_ids(), default_wait_timeout())
        except TimeoutError:
            pass  # the text says which are still unfinished

    def _read_logs(self, force: bool = False) -> None:
        """The shown rows' logs: running ones while they run (throttled), ended ones once."""
        running, ended = [], []
        for tid in self._visible_ids():
            snap = self.monitor.snapshot(tid)
            if snap.ready:
                ended.append(tid)
            elif snap.state not in ("PENDING", "RECEIVED"):
                running.append(tid)
        if self._logs.refresh(running, ended, force=force):
            self._dirty = True

    def _on_tick(self) -> None:
        self._pull_submitted()
        if self._live:
            self._read_logs()
        if self._live and self._dirty:
            self._dirty = False
            html = self._repr_html_()
            if html != self.html:
                self.html = html
                self._publish()
                if self._actions is not None:
                    self._actions.update(*self.counts_to_act_on())

    def _bundle(self) -> dict[str, Any]:
        return {"text/plain": repr(self), "text/html": self.html}

    def output_metadata(self) -> dict[str, Any]:
        """Kept with the output in a saved notebook: ``%celery reattach`` rebuilds the table."""
        ids = self._visible_ids()
        ended = all(self.monitor.snapshot(t).ready for t in ids)
        return saved.output_metadata("table", ids, self.monitor.app, ended)

    def _publish(self) -> None:
        """Replace the shown output (every place it is shown) with the current picture."""
        if self._display_id is None:
            return
        from IPython.display import update_display

        with attached_to(self._parent):
            update_display(self._bundle(), raw=True, display_id=self._display_id, metadata=self.output_metadata())

    def _ipython_display_(self) -> None:
        """Plain HTML under a display id, replaced as tasks move: no widget, so what a saved
        notebook holds is the last picture, readable anywhere (Lab, nbconvert, GitHub)."""
        from IPython.display import display

        from celerynb.config import noninteractive
        from celerynb.display.progress import widgets_available

        if noninteractive():  # CI: one deterministic text, of the tasks' final states
            self._wait_for_rows()
            display({"text/plain": repr(self)}, raw=True, metadata=self.output_metadata())
            return
        self.html = self._repr_html_()
        if not widgets_available():  # a terminal or a script: one picture
            display(self._bundle(), raw=True, metadata=self.output_metadata())
            return
        handle = display(self._bundle(), raw=True, display_id=self._display_id or True,
                         metadata=self.output_metadata())
        self._display_id, self._parent, self._live = handle.display_id, current_parent(), True
        from celerynb.display.buttons import ActionBar

        self._actions = ActionBar(self.cancel, self.retry_failed, self._parent)
        self._actions.show(*self.counts_to_act_on())
