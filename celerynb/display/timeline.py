"""``celerynb.timeline(results)``: what ran where and how efficiently, as a picture.

One lane per worker slot (a pool thread, a prefork child), a bar per task from start to end in
its state's colour, the queued tasks above the lanes, and a summary: wall time, summed task
time, speedup (task time / wall), efficiency (speedup / slots) and the slowest tasks.

The picture is a static SVG from an autoescaped template, shown as an ``<img>`` (JupyterLab's
sanitizer drops inline ``<svg>`` from a notebook it does not trust, and keeps images) and
offered as ``image/svg+xml`` too: a saved notebook shows it without a kernel. ``text/plain``
names counts only, so nbval compares it as is. Its input is a list of plain
:class:`~celerynb.tracking.timing.TaskTiming` records, whoever produced them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery

from celerynb.display import timeline_layout as layouts
from celerynb.rendering import render
from celerynb.tracking.awaiting import task_ids_of
from celerynb.tracking.monitor import get_monitor
from celerynb.tracking.submitted import enable_submit_log
from celerynb.tracking.timing import TaskTiming, read_timings

#: Columns of :meth:`Timeline.to_dataframe`.
COLUMNS = ("task_id", "name", "state", "worker", "slot", "lane", "sent", "started", "ended", "wait", "runtime")
NO_TIMING = ("{n} of the tasks have no timing: their worker stored no start time (celerynb's workers store it "
             "for celerynb's app; workers of an app of your own do not)")


class Timeline:
    """The timing of some tasks: a picture, a summary and the data (see :func:`timeline`).

    Attributes:
        records: one :class:`~celerynb.tracking.timing.TaskTiming` per task.
        now: when the records were read (running tasks are drawn up to it).
    """

    def __init__(self, records: Iterable[TaskTiming], *, app: Celery | None = None, ids: list[str] | None = None,
                 now: float | None = None) -> None:
        self.records = list(records)
        self.app = app
        self.ids = ids  # what refresh() reads again (None: records given as they are)
        self.now = time.time() if now is None else now
        self._stamp: tuple[int, int, float] | None = None
        self._cache: dict[str, Any] = {}

    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Computed once per reading of the records: a display asks for the summary several times."""
        stamp = (id(self.records), len(self.records), self.now)
        if stamp != self._stamp:
            self._stamp, self._cache = stamp, {}
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # -- data ------------------------------------------------------------------------------
    @property
    def summary(self) -> layouts.Summary:
        return self._cached("summary", lambda: layouts.summarize(self.records, self.now))

    def _labels(self) -> dict[tuple[str, str], str]:
        def compute() -> dict[tuple[str, str], str]:
            lanes = layouts.lanes_of(self.records)
            return dict(zip(lanes, layouts.lane_labels(lanes), strict=True))

        return self._cached("labels", compute)

    def refresh(self) -> Timeline:
        """Read the tasks' timing again (for tasks that were still running)."""
        if self.ids is not None and self.app is not None:
            self.records, self.now = read_timings(self.app, self.ids), time.time()
        return self

    def rows(self) -> list[dict[str, Any]]:
        """One dict per task (times in epoch seconds; ``lane`` as the picture labels it)."""
        labels = self._labels()
        return [{"task_id": r.task_id, "name": r.name, "state": r.state, "worker": r.worker, "slot": r.slot,
                 "lane": labels.get(r.lane) if r.timed else None, "sent": r.sent, "started": r.started,
                 "ended": r.ended, "wait": r.wait, "runtime": r.runtime} for r in self.records]

    def to_dataframe(self) -> Any:
        """The timing data as a pandas DataFrame (needs pandas), one row per task."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Timeline.to_dataframe() needs pandas: pip install pandas.") from None
        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    # -- pictures --------------------------------------------------------------------------
    def svg(self) -> str:
        """The picture as a standalone SVG document."""
        return self._cached("svg", lambda: render("timeline_svg", lane=layouts.LANE,
                                                  p=layouts.layout(self.records, self.now, self.summary)))

    def save(self, path: str) -> None:
        """Write the picture to ``path`` as SVG (opens in any browser, embeds in documents)."""
        if not str(path).lower().endswith(".svg"):
            raise ValueError(f"Timeline.save writes SVG: give a path ending in .svg, not {path!r}.")
        with open(path, "w", encoding="utf-8") as out:
            out.write(self.svg())

    def _repr_html_(self) -> str:
        summary = self.summary
        notes = []
        if summary.untimed:
            notes.append(NO_TIMING.format(n=summary.untimed))
        if summary.running:
            notes.append(f"{summary.running} still running (drawn up to now): timeline.refresh() reads them again")
        if summary.mean_wait is not None:
            mean, most = layouts.seconds(summary.mean_wait), layouts.seconds(summary.max_wait)
            notes.append(f"queue wait: mean {mean}, max {most}")
        labels = self._labels()
        slowest = [{"name": r.name or r.task_id, "runtime": layouts.seconds(r.runtime), "lane": labels[r.lane]}
                   for r in summary.slowest]
        picture = base64.b64encode(self.svg().encode()).decode() if summary.timed else ""
        return render("timeline", picture=picture, alt=summary.headline(), slowest=slowest, notes=notes)

    def _repr_mimebundle_(self, **_: Any) -> dict[str, Any]:
        bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        if self.summary.timed:
            bundle["image/svg+xml"] = self.svg()
        return bundle

    def __repr__(self) -> str:
        """Counts only (no times): the same text on every run, for nbval."""
        s = self.summary
        states = ", ".join(f"{state} {n}" for state, n in s.counts.items())
        text = (f"<Timeline {s.tasks} task{'s' * (s.tasks != 1)} on {s.workers} worker{'s' * (s.workers != 1)}, "
                f"{s.slots} slot{'s' * (s.slots != 1)}")
        if states:
            text += f": {states}"
        if s.untimed:
            text += f"; {s.untimed} without timing"
        return text + ">"


def timeline(results: Any, *, app: Celery | None = None, wait: bool = True, timeout: float | None = None) -> Timeline:
    """What ran where and how efficiently: a lane per worker slot, a bar per task, and a summary.

    Args:
        results: an AsyncResult, a GroupResult (what ``celerynb.map`` returns), task ids, a list
            of those, or :class:`~celerynb.tracking.timing.TaskTiming` records (from any source).
        app: the Celery app (the results' own, else celerynb's).
        wait: first wait until every task ended (at most ``timeout`` seconds, then draw what is
            known); ``False`` draws the running tasks up to now.
        timeout: seconds to wait (default: ``CELERYNB_WAIT_TIMEOUT``, as every celerynb wait).

    Times come from the result backend (celerynb's workers store when, where and how long each
    task ran), read in batches; when a task was sent is known for tasks sent from this kernel.
    """
    items = results if isinstance(results, list | tuple) else [results]
    if items and all(isinstance(item, TaskTiming) for item in items):
        return Timeline(items)
    if any(isinstance(item, TaskTiming) for item in items):
        raise TypeError("timeline() takes results/ids or TaskTiming records, not both: pass one kind.")
    enable_submit_log()
    ids, found_app = task_ids_of(items)
    ids = list(dict.fromkeys(ids))
    monitor = get_monitor(app or found_app)
    if wait and ids:
        from celerynb.config import default_wait_timeout

        try:
            monitor.wait(ids, default_wait_timeout() if timeout is None else timeout)
        except TimeoutError:
            pass  # draw what is known: running tasks up to now
    return Timeline(read_timings(monitor.app, ids), app=monitor.app, ids=ids)
