"""``celerynb.progress(x)``: live bars for one task or ten thousand.

A widget display inside a kernel with ipywidgets; the text twin (:mod:`.text`) everywhere
else. Both follow the shared monitor, so no display polls anything by itself.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.canvas import Signature

from celerynb import _compat
from celerynb.display import _views
from celerynb.display._base import ProgressDisplay, cancel_tasks, ipython
from celerynb.display.text import TextProgress
from celerynb.display.widget_output import WidgetOutput
from celerynb.rendering import render
from celerynb.tracking import canvas
from celerynb.tracking.awaiting import seed_eager, task_ids_of
from celerynb.tracking.canvas import TASK, CanvasNode
from celerynb.tracking.resubmit import RETRYABLE


def widgets_available() -> bool:
    """Widgets render only in a kernel with ipywidgets, and never in CI (``CI=true``) or with
    ``CELERYNB_NONINTERACTIVE=1`` (see :func:`celerynb.config.noninteractive`)."""
    from celerynb.config import noninteractive

    if noninteractive():
        return False
    ip = ipython()
    if ip is None or getattr(ip, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class WidgetProgress(WidgetOutput, ProgressDisplay):
    """ipywidgets bars: per task for a few tasks, one aggregate bar (+ failures) for many."""

    def __init__(self, task_ids: list[str], app: Celery | None = None) -> None:
        import ipywidgets as w

        self._handle_id: str | None = None
        self._shown_in = None
        n = len(dict.fromkeys(task_ids))
        self.group_bar = w.FloatProgress(value=0, min=0, max=100, layout=w.Layout(width="240px"))
        self.group_label = w.HTML()
        self.rows: list[tuple[Any, Any, Any]] = []
        self.row_cancel_buttons: list[Any] = []
        children: list[Any] = []
        if n > 1:
            children.append(w.HBox([self.group_bar, self.group_label]))
        if n <= 10:
            for index in range(n):
                # The bar keeps its width whatever the message beside it, which wraps rather
                # than being cut at the cell's edge.
                name, bar, detail = (w.Label(layout=w.Layout(min_width="160px")),
                                     w.FloatProgress(value=0, min=0, max=100,
                                                     layout=w.Layout(width="240px", min_width="240px")),
                                     w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0")))
                self.rows.append((name, bar, detail))
                row_cancel = w.Button(icon="stop", tooltip="Cancel this task", layout=w.Layout(width="32px"))
                row_cancel.on_click(lambda _b, i=index: self.cancel_row(i))
                self.row_cancel_buttons.append(row_cancel)
                children.append(w.HBox([name, bar, row_cancel, detail], layout=w.Layout(align_items="center")))
        else:
            self.details = w.VBox()
            children.append(self.details)
        self.clock = w.Label()
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning",
                                      tooltip="Revoke the unfinished tasks (see celerynb.progress docs)")
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.retry_button = w.Button(description="Retry failed", icon="redo", button_style="info",
                                     tooltip="Send the failed and cancelled tasks again (celerynb.retry_failed)",
                                     layout=w.Layout(display="none"))
        self.retry_button.on_click(lambda _b: self._retry_clicked())
        children.append(w.HBox([self.cancel_button, self.retry_button, self.clock]))
        self.box = w.VBox(children)
        self.box.add_class("celerynb-progress")
        for button in (self.cancel_button, self.retry_button, *self.row_cancel_buttons):
            _compat.act_on_clicks_at_once(button)  # even while a cell blocks in wait()/get()
        self._failed = 0
        super().__init__(task_ids, app)

    def cancel_row(self, index: int) -> None:
        """The Cancel of one row: its task now (after a retry, the new attempt)."""
        tid = self.ids[index]
        if not self.monitor.snapshot(tid).ready:
            cancel_tasks(self.app, [tid])

    # -- drawing ---------------------------------------------------------------------------
    def draw(self, views: list[_views.TaskView], group: _views.GroupView | None) -> None:
        if group is not None:
            self.group_bar.value = group.percent
            self.group_bar.bar_style = group.bar_style
            self.group_label.value = render("progress_counts", group=group, styles=_views.BAR_STYLES)
        if self.rows:
            panes = self.log_panes()
            for (name, bar, detail), view in zip(self.rows, views, strict=True):
                name.value = view.name
                bar.value = view.fill
                bar.bar_style = view.bar_style
                html = render("progress_detail", view=view, logs=panes.get(view.task_id))  # escaped
                if detail.value != html:  # unchanged: an opened log pane stays open
                    detail.value = html
        elif group is not None:
            self._draw_many(group)
        for button, view in zip(self.row_cancel_buttons, views, strict=False):
            button.layout.visibility = "hidden" if view.ready else "visible"  # the row keeps its place
        percent = group.percent if group is not None else views[0].percent
        self.clock.value = self.clock_text(percent)
        # Nothing left to cancel: the button goes, the elapsed time stays; back after a retry.
        self.cancel_button.disabled = self.finished
        self.cancel_button.layout.display = "none" if self.finished else None
        if group is not None:
            self._failed = sum(group.counts.get(state, 0) for state in RETRYABLE)
        else:
            self._failed = sum(1 for v in views if v.state in RETRYABLE)
        self.retry_button.layout.display = None if self._failed else "none"
        self.retry_button.description = f"Retry failed ({self._failed})" if self._failed else "Retry failed"

    def _draw_many(self, group: _views.GroupView) -> None:
        import ipywidgets as w

        running = self.tally.running() if self.tally is not None else []
        html = render("progress_details", failures=group.failures[:3], running=running)
        if not self.details.children:
            self.details.children = (w.HTML(),)
        if self.details.children[0].value != html:
            self.details.children[0].value = html


def progress(*results: Any, wait: bool = False, timeout: float | None = None, app: Celery | None = None,
             widget: bool | None = None, cancel_on_interrupt: bool = False) -> Any:
    """Show live progress of tasks; returns the display (or, with ``wait=True``, the results).

    Args:
        results: an ``AsyncResult``, a ``GroupResult``/``ResultSet``, lists of them, or task id
            strings (e.g. from another kernel or after a restart). One chain, group or chord
            (any nesting; a signature is sent now, a result already sent is followed) shows a
            live tree instead: see :mod:`celerynb.display.tree`.
        wait: block with live updates until every task ends, then return the results (one value
            for one task, a list otherwise; a failed task's exception in its place).
        timeout: with ``wait``, seconds before ``TimeoutError``.
        app: the Celery app for plain ids (celerynb's app by default).
        widget: force the widget (True) or the text twin (False); chosen automatically by default.
        cancel_on_interrupt: with ``wait``, a kernel interrupt (stop button, Ctrl-C) cancels the
            unfinished tasks; by default they keep running and the interrupt says how to cancel them.

    Cancel: the display's Cancel button (or ``.cancel()``, or :func:`celerynb.cancel`) revokes
    queued tasks and stops running ones on every pool (see
    :func:`celerynb.tracking.cancel.cancel_tasks`); a task still inside a long call shows
    "cancelling" until it stops.
    A few tasks get a Cancel per row too. "Retry failed" (shown once a task failed or was
    cancelled) sends those again: see :func:`celerynb.retry_failed`.
    """
    tree, results = _workflow(results, app)
    if tree is not None and tree.kind != TASK:
        from celerynb.display.tree import tree_display

        use_widget = widgets_available() if widget is None else widget
        return _show(tree_display(tree, app or _app_of(results), use_widget), use_widget, wait, timeout,
                     cancel_on_interrupt)
    ids, found_app = task_ids_of(results)
    if not ids:
        raise ValueError("progress() needs at least one task: pass an AsyncResult, a GroupResult or task ids.")
    seed_eager(results, app or found_app)
    use_widget = widgets_available() if widget is None else widget
    cls = WidgetProgress if use_widget else TextProgress
    return _show(cls(ids, app or found_app), use_widget, wait, timeout, cancel_on_interrupt)


def _show(display: ProgressDisplay, use_widget: bool, wait: bool, timeout: float | None,
          cancel_on_interrupt: bool) -> Any:
    if wait and not use_widget:
        from celerynb.config import noninteractive

        if noninteractive():
            # No live output in CI: the one display is the final state, so nbval sees the same
            # text on every run (it ignores update_display_data).
            values = display.wait(timeout, cancel_on_interrupt)
            display.show()
            return values
    display.show()
    if wait:
        return display.wait(timeout, cancel_on_interrupt)
    return display


def _workflow(results: tuple[Any, ...], app: Celery | None) -> tuple[CanvasNode | None, tuple[Any, ...]]:
    """One chain/group/chord (a signature is sent now), or a saved tree: (its tree, the results
    to follow); (None, results) for anything else (tasks, ids, a flat group: bars as before)."""
    if len(results) != 1:
        return None, results
    value = results[0]
    if isinstance(value, CanvasNode):
        return value, (value.task_id,) if value.kind == TASK else results
    if isinstance(value, Signature):
        if value.get("subtask_type") is None:  # one task: sent, then one bar
            return None, (value.apply_async(),)
        tree, result = canvas.tree_of(value, app)
        return tree, (result,)
    if canvas.is_canvas(value):
        return canvas.tree_of(value, app)[0], results
    return None, results


def _app_of(results: tuple[Any, ...]) -> Celery | None:
    return getattr(results[0], "app", None) if results else None
