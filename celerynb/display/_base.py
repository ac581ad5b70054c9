"""What every progress display shares: tracking through the monitor, throttled redraws, the
final summary, waiting, results and cancel. Subclasses only draw (widgets or text), as in
dask's progress bars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery

from celerynb.display import _views, lifetime, saved
from celerynb.display.tally import GroupTally
from celerynb.display.task_logs import LogCache, pane
from celerynb.rendering import render
from celerynb.tracking import cancel as cancelling
from celerynb.tracking.awaiting import keep_running_note, outcome
from celerynb.tracking.cancel import cancel_tasks
from celerynb.tracking.monitor import get_monitor
from celerynb.tracking.resubmit import RETRYABLE, attempt_of
from celerynb.tracking.snapshot import task_name
from celerynb.tracking.submitted import submitted

logger = logging.getLogger("celerynb.display")

#: Up to this many tasks, one bar per task; more get one aggregate bar.
FEW = 10
#: Shown while the monitor cannot reach the result backend (it keeps retrying).
DISCONNECTED = "disconnected from the server: retrying (states resume when it is back)"
#: Minimum seconds between two redraws of one display (a few per second).
REDRAW_EVERY = 0.25


def ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def current_parent() -> dict | None:
    """The request (cell) now running, so that later background output goes back to it."""
    ip = ipython()
    get_parent = getattr(ip, "get_parent", None)
    if get_parent is None:
        return None
    try:
        return get_parent()
    except Exception:  # noqa: BLE001 - not a kernel shell
        return None


def latest_request() -> dict | None:
    """The kernel's latest execute request (the cell running now, or the last one), from any thread."""
    kernel = getattr(ipython(), "kernel", None)
    get_parent = getattr(kernel, "get_parent", None)
    if get_parent is None:
        return None
    try:
        return get_parent("shell") or None
    except Exception:  # noqa: BLE001 - another kernel implementation
        return None


def current_cell() -> Any:
    """The execution now running: its request's msg_id (``execution_count`` is not enough:
    nbval and other ``store_history=False`` runs never increment it)."""
    parent = current_parent() or {}
    msg_id = (parent.get("header") or {}).get("msg_id")
    return msg_id or getattr(ipython(), "execution_count", None)


@contextlib.contextmanager
def attached_to(parent: dict | None) -> Iterator[None]:
    """Send display messages of this thread as outputs of ``parent`` (ipykernel 7 needs it explicitly)."""
    ip = ipython()
    setter = getattr(ip, "set_thread_parent", None)
    if not parent or setter is None:
        yield
        return
    tokens = setter(parent)
    try:
        yield
    finally:
        ip.reset_thread_parent(tokens)


class ProgressDisplay:
    """Follows tasks through the shared monitor and redraws at most every ``REDRAW_EVERY`` s.

    A few tasks are drawn one bar each from their snapshots; many are counted by a
    :class:`~celerynb.display.tally.GroupTally` as changes arrive, so neither an update nor
    a redraw looks at every task.
    """

    def __init__(self, task_ids: list[str], app: Celery | None = None) -> None:
        self.ids = list(dict.fromkeys(task_ids))
        self.monitor = get_monitor(app)
        self.app = self.monitor.app
        self.started = time.monotonic()
        self.ended: float | None = None
        self.finished = False
        self._span: float | None = None
        self._percent: dict[str, float] = {}
        self._lock = threading.RLock()
        self._dirty = True
        self._last_draw = 0.0
        self._last_clock = 0.0
        self._parent = current_parent()
        self.tally = None if self.few else GroupTally(self.ids)
        self.logs = LogCache(self.app) if self.few else None  # a few tasks: each row's log pane
        self._remove_listener = self.monitor.add_listener(self._on_change, self.ids)
        self._remove_ticker = self.monitor.add_ticker(self._on_tick, REDRAW_EVERY)
        lifetime.adopt(self)  # a re-run of its cell closes it
        lifetime.register_live(self)  # follows retry_failed to the new attempts
        self._follow(self.ids)

    def _follow(self, task_ids: list[str]) -> None:
        self.monitor.track(task_ids)
        self.monitor.read_now(task_ids)  # the first picture: what is stored now
        if self.tally is not None:
            with self._lock:  # states known before the listener: once, then only changes
                for tid in self.ids:
                    snap = self.monitor.snapshot(tid)
                    if snap.state != "PENDING":
                        self.tally.update(snap, task_name(tid, snap))

    # -- views -----------------------------------------------------------------------------
    @property
    def few(self) -> bool:
        return len(self.ids) <= FEW

    def views(self) -> tuple[list[_views.TaskView], _views.GroupView | None]:
        """Per-task views (a few tasks) and the aggregate (many: no per-task views)."""
        if self.tally is not None:
            with self._lock:
                return [], self.tally.view()
        views = []
        for tid in self.ids:
            snap = self.monitor.snapshot(tid)
            view = _views.task_view(snap, self._percent.get(tid, 0.0), task_name(tid, snap), attempt_of(tid))
            self._percent[tid] = view.percent
            if cancelling.requested(tid):
                view = _views.cancelling(view)
            views.append(view)
        views = self._told_apart(views)
        group = _views.group_view(views) if len(views) > 1 else None
        return views, group

    def _told_apart(self, views: list[_views.TaskView]) -> list[_views.TaskView]:
        """Rows of the same task name get their arguments: ``square(3)``, ``square(4)``."""
        names = [v.name for v in views]
        if len(set(names)) == len(names):
            return views
        labelled = []
        for view in views:
            if names.count(view.name) > 1:
                snap = self.monitor.snapshot(view.task_id)
                entry = submitted.get(view.task_id)
                if snap.args is not None or snap.kwargs is not None:
                    call = _views.call_arguments(snap.args, snap.kwargs, width=30)
                else:
                    call = _views.call_arguments(entry.argsrepr, entry.kwargsrepr, width=30) if entry else "…"
                view = dataclasses.replace(view, name=f"{view.name}({call})")
            labelled.append(view)
        return labelled

    def elapsed(self) -> float:
        """Seconds from the first task sent to the last one ended, once that is known; the time
        this display has been watching before (a display of tasks that ended long ago does not
        say "0s")."""
        if self._span is not None:
            return self._span
        return (self.ended or time.monotonic()) - self.started

    def _tasks_span(self) -> float | None:
        """First sent (or started) to last ended, from the submit log and what workers stored."""
        first = last = None
        for tid in self.ids:
            snap = self.monitor.snapshot(tid)
            entry = submitted.get(tid)
            began = entry.sent_at if entry else snap.started
            if began is not None:
                first = began if first is None else min(first, began)
            if snap.started is not None and snap.runtime is not None:
                end = snap.started + snap.runtime
                last = end if last is None else max(last, end)
        return last - first if first is not None and last is not None and last >= first else None

    def clock_text(self, percent: float) -> str:
        elapsed = self.elapsed()
        text = f"elapsed {_views.format_duration(elapsed)}"
        if not self.finished:
            text += f" · ETA {_views.format_duration(_views.eta(elapsed, percent))}"
            if not self.monitor.connected:
                text += " · " + DISCONNECTED
        return text

    def text(self) -> str:
        """Deterministic text (no ids, no times): the ``text/plain`` that nbval compares."""
        views, group = self.views()
        lines = [_views.group_line(group)] if group is not None else []
        if self.few:
            lines += [_views.task_line(v) for v in views]
        else:
            lines += [_views.task_line(v) for v in group.failures]
            retried = sum(1 for tid in self.ids if attempt_of(tid) > 1)
            if retried:
                lines.append(f"{retried} of {len(self.ids)} tasks sent again (attempt {self.last_attempt()})")
        if not self.finished and not self.monitor.connected:
            lines.append(DISCONNECTED)
        return "\n".join(lines)

    def summary_html(self) -> str:
        """The final state as static HTML, readable without a kernel (saved notebooks, GitHub)."""
        views, group = self.views()
        return render("progress_summary", group=group, views=views if self.few else [], panes=self.log_panes(),
                      counts=_views.counts_text(group) if group is not None else "",
                      elapsed=_views.format_duration(self.elapsed()))

    def __repr__(self) -> str:
        return self.text()

    def output_metadata(self) -> dict[str, Any]:
        """Kept with the output in a saved notebook: ``%celery reattach`` rebuilds the display."""
        return saved.output_metadata("progress", self.ids, self.app, self.finished)

    # -- updates ---------------------------------------------------------------------------
    def _on_change(self, snapshot: Any) -> None:
        if self.tally is not None:
            with self._lock:
                self.tally.update(snapshot, task_name(snapshot.task_id, snapshot))
        self._dirty = True
        if time.monotonic() - self._last_draw >= REDRAW_EVERY:
            self.refresh()

    def _on_tick(self) -> None:
        if self._read_logs():
            self._dirty = True
        if self._dirty or time.monotonic() - self._last_clock >= 1.0:
            self.refresh()

    def _read_logs(self, final: bool = False) -> bool:
        """The rows' logs (a few tasks only): running ones throttled, ended ones once."""
        if self.logs is None:
            return False
        snaps = [self.monitor.snapshot(tid) for tid in self.ids]
        running = [s.task_id for s in snaps if not s.ready and s.state not in ("PENDING", "RECEIVED")]
        return self.logs.refresh(running, [s.task_id for s in snaps if s.ready], force=final)

    def log_panes(self) -> dict[str, Any]:
        """Task id -> what a template draws of its logs (absent: nothing written)."""
        if self.logs is None:
            return {}
        return {tid: found for tid in self.ids if (found := pane(self.logs.get(tid))) is not None}

    def refresh(self, background: bool = True) -> None:
        """Redraw now; finish (static summary) once every task is ready."""
        with self._lock:
            if self.finished:
                return
            self._dirty = False
            self._last_draw = self._last_clock = time.monotonic()
            views, group = self.views()
            done = group.ready if self.tally is not None else all(v.ready for v in views)
            if done:
                self.ended = time.monotonic()
                self.finished = True
                self._span = self._tasks_span()
                self._read_logs(final=True)  # the summary shows every task's logs as stored at its end
            self.draw(views, group)
        if done:
            self._remove_listener()
            self._remove_ticker()
            # From the monitor's thread: as an output of the cell running now (nbclient and
            # papermill record only its messages; the update still lands by display id).
            with attached_to((latest_request() or self._parent) if background else None):
                self.publish_final()

    def draw(self, views: list[_views.TaskView], group: _views.GroupView | None) -> None:
        """Subclasses: show the current views."""

    def publish_final(self) -> None:
        """Subclasses: leave the final state (static HTML + deterministic text) in the output."""

    # -- user API --------------------------------------------------------------------------
    def wait(self, timeout: float | None = None, cancel_on_interrupt: bool = False) -> Any:
        """Block until every task ends; returns :meth:`results`.

        A kernel interrupt (the stop button, Ctrl-C) stops the waiting at once: the tasks keep
        running and the ``KeyboardInterrupt`` says how to cancel them; with
        ``cancel_on_interrupt`` they are cancelled instead.

        Raises:
            TimeoutError: some task is still running after ``timeout`` seconds.
            KeyboardInterrupt: interrupted while waiting.
        """
        if timeout is None:
            from celerynb.config import default_wait_timeout

            timeout = default_wait_timeout()  # bounded in CI / CELERYNB_NONINTERACTIVE=1
        with self.interruptible(cancel_on_interrupt):
            self._block(timeout)
        was_finished = self.finished
        self.refresh(background=False)
        if was_finished:
            # Finished in the background: publish again from this cell so that a saved
            # notebook (nbclient only records the running cell's messages) gets the outcome.
            self.publish_final()
        return self.results()

    def _block(self, timeout: float | None) -> None:
        """Return once every task ended (subclasses: once the display has)."""
        self.monitor.wait(self.ids, timeout)

    @contextlib.contextmanager
    def interruptible(self, cancel_on_interrupt: bool) -> Iterator[None]:
        """A ``KeyboardInterrupt`` in the block says what became of the unfinished tasks, in one line."""
        try:
            yield
        except KeyboardInterrupt:
            unfinished = self.unfinished_ids()
            if cancel_on_interrupt:
                cancel_tasks(self.app, unfinished)
                raise KeyboardInterrupt(f"cancelled {len(unfinished)} unfinished task(s) "
                                        "(cancel_on_interrupt=True)") from None
            raise KeyboardInterrupt(keep_running_note(len(unfinished))) from None

    def results(self) -> Any:
        """Return values (a failed task's exception in its place); one value for one task."""
        values = []
        for tid in self.ids:
            snap = self.monitor.full_snapshot(tid)
            values.append(outcome(snap, self.app)[1] if snap.ready else None)
        return values[0] if len(values) == 1 else values

    def failed_count(self) -> int:
        """How many tasks ended in FAILURE or REVOKED: what "Retry failed" would send again."""
        if self.tally is not None:
            with self._lock:
                return sum(self.tally.counts.get(state, 0) for state in RETRYABLE)
        return sum(1 for tid in self.ids if self.monitor.snapshot(tid).state in RETRYABLE)

    def last_attempt(self) -> int:
        return max((attempt_of(tid) for tid in self.ids), default=1)

    def replace_tasks(self, mapping: dict[str, str]) -> None:
        """Follow ``mapping[old]`` in the place of each ``old`` task (its retry), and come back to
        life until the new attempts end: the listener and ticker are armed again."""
        ids = [mapping.get(tid, tid) for tid in self.ids]
        if ids == self.ids:
            return
        with self._lock:
            self._remove_listener()
            self._remove_ticker()
            for old in mapping:
                self._percent.pop(old, None)
            self.ids = ids
            self.tally = None if self.few else GroupTally(self.ids)
            self.finished, self.ended, self._span, self._dirty = False, None, None, True
            self.started = time.monotonic()
            self._remove_listener = self.monitor.add_listener(self._on_change, self.ids)
            self._remove_ticker = self.monitor.add_ticker(self._on_tick, REDRAW_EVERY)
        self._follow(self.ids)  # tasks the monitor forgot since are read again
        self.revive()
        self.refresh()

    def revive(self) -> None:
        """Subclasses: show the live display again in place of the final summary."""

    def unfinished_ids(self) -> list[str]:
        if self.tally is not None:
            with self._lock:
                return self.tally.unfinished()
        return [t for t in self.ids if not self.monitor.snapshot(t).ready]

    def cancel(self) -> None:
        """Cancel every unfinished task (see :func:`cancel_tasks` for what can be stopped)."""
        cancel_tasks(self.app, self.unfinished_ids())

    def close(self) -> None:
        """Stop following the tasks (the display keeps its last state)."""
        self._remove_listener()
        self._remove_ticker()
