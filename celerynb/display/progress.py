"""``celerynb.progress(x)``: live bars for one task or ten thousand.

A widget display inside a kernel with ipywidgets; the text twin (:mod:`.text`) everywhere
else. Both follow the shared monitor, so no display polls anything by itself.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celerynb import _compat
from celerynb.display import _views
from celerynb.display._base import ProgressDisplay, current_cell, ipython
from celerynb.display.text import TextProgress
from celerynb.rendering import render
from celerynb.tracking.awaiting import seed_eager, task_ids_of


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


class WidgetProgress(ProgressDisplay):
    """ipywidgets bars: per task for a few tasks, one aggregate bar (+ failures) for many."""

    def __init__(self, task_ids: list[str], app: Celery | None = None) -> None:
        import ipywidgets as w

        self._handle_id: str | None = None
        self._shown_in = None
        n = len(dict.fromkeys(task_ids))
        self.group_bar = w.FloatProgress(value=0, min=0, max=100, layout=w.Layout(width="240px"))
        self.group_label = w.HTML()
        self.rows: list[tuple[Any, Any, Any]] = []
        children: list[Any] = []
        if n > 1:
            children.append(w.HBox([self.group_bar, self.group_label]))
        if n <= 10:
            for _ in range(n):
                # The bar keeps its width whatever the message beside it, which wraps rather
                # than being cut at the cell's edge.
                name, bar, detail = (w.Label(layout=w.Layout(min_width="160px")),
                                     w.FloatProgress(value=0, min=0, max=100,
                                                     layout=w.Layout(width="240px", min_width="240px")),
                                     w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0")))
                self.rows.append((name, bar, detail))
                children.append(w.HBox([name, bar, detail], layout=w.Layout(align_items="center")))
        else:
            self.details = w.VBox()
            children.append(self.details)
        self.clock = w.Label()
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning",
                                      tooltip="Revoke the unfinished tasks (see celerynb.progress docs)")
        self.cancel_button.on_click(lambda _b: self.cancel())
        children.append(w.HBox([self.cancel_button, self.clock]))
        self.box = w.VBox(children)
        self.box.add_class("celerynb-progress")
        super().__init__(task_ids, app)

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
        percent = group.percent if group is not None else views[0].percent
        self.clock.value = self.clock_text(percent)
        if self.finished:  # nothing left to cancel: the button goes, the elapsed time stays
            self.cancel_button.disabled = True
            self.cancel_button.layout.display = "none"

    def _draw_many(self, group: _views.GroupView) -> None:
        import ipywidgets as w

        running = self.tally.running() if self.tally is not None else []
        html = render("progress_details", failures=group.failures[:3], running=running)
        if not self.details.children:
            self.details.children = (w.HTML(),)
        if self.details.children[0].value != html:
            self.details.children[0].value = html

    # -- output ----------------------------------------------------------------------------
    def _bundle(self, final: bool) -> dict[str, Any]:
        """The widget while tasks run; once final, only static HTML and text: JupyterLab prefers a
        widget view to the HTML beside it and shows "model not found" for it in a saved notebook."""
        if final:
            return {"text/plain": self.text(), "text/html": self.summary_html()}
        data = _compat.widget_mimebundle(self.box)
        data["text/plain"] = self.text()
        return data

    def show(self) -> WidgetProgress:
        if ipython() is None:
            return self
        from IPython.display import display

        with self._lock:
            handle = display(self._bundle(self.finished), raw=True, display_id=True, metadata=self.output_metadata())
            self._handle_id = handle.display_id
            self._shown_in = current_cell()
        return self

    def publish_final(self) -> None:
        if self._handle_id is None:
            return
        from IPython.display import update_display

        update_display(self._bundle(True), raw=True, display_id=self._handle_id, metadata=self.output_metadata())

    def _ipython_display_(self) -> None:
        if self._handle_id is not None and current_cell() == self._shown_in:
            return  # progress() already showed it in this cell
        from IPython.display import display

        display(self._bundle(self.finished), raw=True, metadata=self.output_metadata())

    def _repr_mimebundle_(self, **_: Any) -> dict[str, Any]:
        return self._bundle(self.finished)


def progress(*results: Any, wait: bool = False, timeout: float | None = None, app: Celery | None = None,
             widget: bool | None = None) -> Any:
    """Show live progress of tasks; returns the display (or, with ``wait=True``, the results).

    Args:
        results: an ``AsyncResult``, a ``GroupResult``/``ResultSet``, lists of them, or task id
            strings (e.g. from another kernel or after a restart).
        wait: block with live updates until every task ends, then return the results (one value
            for one task, a list otherwise; a failed task's exception in its place).
        timeout: with ``wait``, seconds before ``TimeoutError``.
        app: the Celery app for plain ids (celerynb's app by default).
        widget: force the widget (True) or the text twin (False); chosen automatically by default.

    Cancel: the display's Cancel button (or ``.cancel()``, or :func:`celerynb.cancel`) revokes
    queued tasks and stops running ones on every pool (see
    :func:`celerynb.tracking.cancel.cancel_tasks`); a task still inside a long call shows
    "cancelling" until it stops.
    """
    ids, found_app = task_ids_of(results)
    if not ids:
        raise ValueError("progress() needs at least one task: pass an AsyncResult, a GroupResult or task ids.")
    seed_eager(results, app or found_app)
    use_widget = widgets_available() if widget is None else widget
    cls = WidgetProgress if use_widget else TextProgress
    display = cls(ids, app or found_app)
    if wait and not use_widget:
        from celerynb.config import noninteractive

        if noninteractive():
            # No live output in CI: the one display is the final state, so nbval sees the same
            # text on every run (it ignores update_display_data).
            values = display.wait(timeout)
            display.show()
            return values
    display.show()
    if wait:
        return display.wait(timeout)
    return display
