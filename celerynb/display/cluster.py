"""``celerynb.ClusterMonitor`` / ``%celery monitor``: the whole cluster in a cell.

Workers (pool, concurrency, active and processed counts, heartbeat age), queues with their
depth and the tasks waiting at their head, and every task of the cluster whoever sent it, from
:class:`~celerynb.tracking.cluster_events.ClusterEvents`. As ``TaskTable`` does, the display
is plain HTML under a display id, replaced at most every ``refresh`` seconds from the events
thread, so a saved notebook keeps the last picture; :meth:`ClusterMonitor.stop` leaves it
static, marked stopped. ``text/plain`` is deterministic (counts, no ids, names or times).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from celerynb import config
from celerynb.display import _views, lifetime
from celerynb.display._base import attached_to, current_parent
from celerynb.display.timeline import Timeline
from celerynb.rendering import render
from celerynb.tracking.cluster_events import MAX_TASKS, ClusterEvents, TaskRecord, WorkerRecord
from celerynb.tracking.task_lookup import TaskWhere, describe
from celerynb.tracking.timing import from_event_records

#: Seconds between two redraws at most (a few per second).
REFRESH = 0.5
#: Seconds between two drawings of the monitor's timeline section.
TIMELINE_EVERY = 2.0
#: Tasks waiting in a queue shown under it.
NEXT_SHOWN = 3

Tab = Callable[[list[TaskRecord]], str]


def _shown(state: str) -> str:
    """A task sent (its ``task-sent`` event) and not yet received by a worker waits in a queue."""
    return "queued" if state == "PENDING" else state


def _age(then: float | None, now: float) -> str:
    return "never" if then is None else f"{_views.format_duration(max(0.0, now - then))} ago"


class ClusterMonitor:
    """Every worker, queue and task of the cluster the app is connected to, live in a cell.

    Args:
        app: the Celery app whose broker and backend to watch (celerynb's app in use by default).
        rows: tasks shown in the table (the latest); :meth:`tasks` returns all that are kept.
        max_tasks: tasks kept in memory (the latest); counters count every one.
        enable_events: send ``enable_events`` to the workers (at start and every minute), as
            Flower does, so workers started without ``-E`` send task events too.
        queues: queues to watch besides the app's, the workers' and those events name.
        refresh: seconds between redraws at most.
        timeline: show a "Timeline" section (:func:`celerynb.timeline` of the kept tasks, from
            their events: a lane per task running at once on each worker), redrawn at most every
            :data:`TIMELINE_EVERY` s.
    """

    def __init__(self, app: Celery | None = None, *, rows: int = 20, max_tasks: int = MAX_TASKS,
                 enable_events: bool = True, queues: list[str] | None = None, refresh: float = REFRESH,
                 timeline: bool = True) -> None:
        if app is None:
            from celerynb.cluster.apps import current_app

            app = current_app()
        if rows < 1 or max_tasks < 1:
            raise ValueError("ClusterMonitor: rows and max_tasks must be at least 1.")
        self.app = app
        self.rows = rows
        self.refresh = refresh
        self.stopped = False
        self._tabs: list[tuple[str, Tab]] = []
        self._timeline_drawn: tuple[float, str] = (0.0, "")
        if timeline:
            self.add_tab("Timeline", self._timeline_tab)
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._display_id: str | None = None
        self._parent: dict | None = None
        self.html = ""
        self.events = ClusterEvents(app, max_tasks=max_tasks, enable_events=enable_events, queues=queues,
                                    on_change=self._on_change)
        self.events.start()
        lifetime.adopt(self)  # a re-run of its cell stops it

    def __repr__(self) -> str:
        return self.text()

    # -- what it knows ---------------------------------------------------------------------
    def describe(self, task_id: str) -> TaskWhere:
        """Where ``task_id`` is: ``str()`` of it reads "queued (position 3 in 'default')",
        "STARTED on worker@host", "SUCCESS" or "unknown" (no one ever sent it), unlike Celery's
        PENDING, which means both queued and unknown."""
        return describe(self.events, task_id)

    def tasks(self, limit: int | None = None) -> list[TaskRecord]:
        """The tasks kept (newest first): name, state, worker, queue, sent/received/started/ended
        times, runtime. What a timeline or a DataFrame is made from."""
        return self.events.tasks(limit)

    def workers(self) -> list[WorkerRecord]:
        return self.events.workers()

    def queues(self) -> dict[str, int]:
        """Messages waiting in each watched queue, as last read."""
        return dict(self.events.depths)

    def watch_queue(self, name: str) -> None:
        """Also show queue ``name`` (one no worker consumes, say)."""
        self.events.watch_queue(name)

    def add_tab(self, title: str, render_tab: Tab) -> None:
        """Show ``render_tab(self.tasks())`` (HTML) in a foldable section under the tables, redrawn
        with them: the hook for other views of the same tasks (a timeline)."""
        self._tabs.append((title, render_tab))

    def _timeline_tab(self, records: list[TaskRecord]) -> str:
        """The kept tasks' timeline: drawn again at most every ``TIMELINE_EVERY`` s (an SVG of many
        tasks costs tens of ms), and once more when the monitor stops."""
        drawn_at, html = self._timeline_drawn
        now = time.monotonic()
        if html and now - drawn_at < TIMELINE_EVERY and not self.stopped:
            return html
        timings = from_event_records(records)
        html = Timeline(timings)._repr_html_() if any(t.timed for t in timings) else (
            "No task has started since the monitor began.")
        self._timeline_drawn = (now, html)
        return html

    # -- drawing ---------------------------------------------------------------------------
    def text(self) -> str:
        """Deterministic text: counts, pools and states; no ids, host names or times."""
        workers = self.workers()
        pools = ", ".join(f"{w.pool or '?'} x{w.concurrency or '?'}" for w in workers)
        depths = self.queues()
        counts = self.events.state_counts()
        lines = [
            f"celerynb cluster monitor{' (stopped)' if self.stopped else ''}: {len(workers)} worker(s)"
            + (f" ({pools})" if pools else "") + f", {len(depths)} queue(s), {sum(depths.values())} message(s) waiting",
            "tasks seen: " + (", ".join(f"{_shown(state)} {n}" for state, n in sorted(counts.items())) or "none"),
        ]
        if not self.events.connected and self.events.error:
            lines.append("disconnected from the broker: retrying")
        return "\n".join(lines)

    def _task_rows(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for record in self.events.tasks(self.rows):
            state, percent = record.state, None
            if state in ("STARTED", "RECEIVED"):
                meta = self.events.progress_meta(record.task_id)
                percent = _views.progress_percent(meta)
                if percent is not None:
                    state = "PROGRESS"
            shown = _shown(state)
            began = record.started
            runtime = record.runtime if record.runtime is not None else (now - began if began and not record.ended
                                                                          else None)
            rows.append({"id": record.task_id, "name": record.name or "?", "state": shown,
                         "style": _views.BAR_STYLES.get(state, ""), "percent": percent, "worker": record.worker or "",
                         "queue": record.queue or "", "runtime": _views.format_duration(runtime) if runtime else "",
                         "error": record.exception or ""})
        return rows

    def _queue_rows(self) -> list[dict[str, Any]]:
        waiting = self.events.waiting
        return [{"name": name, "depth": depth,
                 "next": [f"{w.name or '?'} ({w.task_id[:8]}, position {w.position})"
                          for w in waiting.get(name, [])[:NEXT_SHOWN]]}
                for name, depth in sorted(self.events.depths.items())]

    def _repr_html_(self) -> str:
        now = time.time()
        workers = [{"name": w.hostname, "pool": w.pool or "?", "concurrency": w.concurrency or "?",
                    "active": "" if w.active is None else w.active, "processed": "" if w.processed is None else w.processed,
                    "heartbeat": _age(w.heartbeat, now), "alive": w.alive} for w in self.workers()]
        tabs = []
        if self._tabs:
            records = self.tasks()
            for title, render_tab in self._tabs:
                try:
                    tabs.append((title, _markup(render_tab(records))))
                except Exception as exc:  # noqa: BLE001 - a broken tab must not break the monitor
                    tabs.append((title, f"{title} failed: {type(exc).__name__}: {exc}"))
        counts = self.events.counts
        return render("cluster_monitor", broker=config.mask_url(self.app.conf.broker_url), stopped=self.stopped,
                      connected=self.events.connected, workers=workers, queues=self._queue_rows(),
                      can_peek=self.events.can_peek, tasks=self._task_rows(now), kept=len(self.events.state.tasks),
                      states=sorted(self.events.state_counts().items()), tabs=tabs,
                      events=sum(n for kind, n in counts.items() if kind.startswith("task-")))

    def _bundle(self) -> dict[str, Any]:
        return {"text/plain": self.text(), "text/html": self.html}

    def _on_change(self) -> None:
        """From the events thread: redraw, at most every ``refresh`` seconds."""
        if self._display_id is None or self.stopped or time.monotonic() - self._last_draw < self.refresh:
            return
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            self._last_draw = time.monotonic()
            html = self._repr_html_()
            if html == self.html and not self.stopped:
                return
            self.html = html
            from IPython.display import update_display

            with attached_to(self._parent):
                update_display(self._bundle(), raw=True, display_id=self._display_id)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        from celerynb.display.progress import widgets_available

        self.html = self._repr_html_()
        if config.noninteractive() or not widgets_available():  # CI, a terminal: one picture
            display({"text/plain": self.text()} if config.noninteractive() else self._bundle(), raw=True)
            return
        handle = display(self._bundle(), raw=True, display_id=self._display_id or True)
        self._display_id, self._parent = handle.display_id, current_parent()

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop receiving; the display keeps its last picture, marked stopped (static HTML)."""
        if self.stopped:
            return
        self.events.stop()
        self.stopped = True
        if self._display_id is not None:
            self._publish()

    close = stop  # what a re-run of the cell calls


def _markup(html: str) -> Any:
    from markupsafe import Markup

    return Markup(html)  # the tab's own HTML: its renderer escapes its data
