"""``celerynb.progress(workflow)``: a live tree of a chain, group, chord or any nesting of them.

One row per chain step, group, chord header and body (computed by
:class:`~celerynb.display.tree_model.TreeModel`), an aggregate bar on every inner node, a leaf
bar per task, collapse/expand and a Cancel per subtree. States arrive through the shared
monitor (pushed, batched reads), so a refresh reads nothing from the backend and draws a
bounded number of rows whatever the size: the widget is a fixed pool of at most
:data:`~celerynb.display.tree_model.MAX_ROWS` rows. Like every display it has a text twin and
ends as static HTML + text; its saved metadata holds the tree's shape of ids, so
``%celery reattach`` rebuilds the tree.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from celerynb import _compat
from celerynb.display import _views, saved
from celerynb.display._base import REDRAW_EVERY, ProgressDisplay
from celerynb.display.text import TextProgress
from celerynb.display.tree_model import TreeModel
from celerynb.display.widget_output import WidgetOutput
from celerynb.rendering import render
from celerynb.tracking.awaiting import outcome
from celerynb.tracking.cancel import cancel_tasks
from celerynb.tracking.canvas import CanvasNode

#: A saved notebook keeps the tree's shape up to this many tasks; above, its ids only (a flat display).
SAVED_TREE_MAX = saved.MAX_IDS


class TreeMixin:
    """What the widget and text trees share: the model fed by the monitor, text, summary, cancel."""

    model: TreeModel

    def _setup_tree(self, tree: CanvasNode) -> list[str]:
        self.canvas = tree
        self.model = TreeModel(tree)
        return self.model.ids

    @property
    def few(self) -> bool:  # never one bar per task: the tree draws its own rows
        return False

    def _follow(self, task_ids: list[str]) -> None:
        self.monitor.track(task_ids)
        self.monitor.read_now(task_ids)
        with self._lock:
            self.tally = self.model.root.tally
            self.logs = None
            for tid in self.model.ids:
                snap = self.monitor.snapshot(tid)
                if snap.state != "PENDING":
                    self.model.update(snap)

    #: How many times the tree was redrawn (benchmarks count backend round trips per refresh).
    redraws = 0

    def refresh(self, background: bool = True) -> None:
        self.redraws += 1
        super().refresh(background)

    def _on_change(self, snapshot: Any) -> None:
        with self._lock:
            self.model.update(snapshot)
        self._dirty = True
        if time.monotonic() - self._last_draw >= REDRAW_EVERY:
            self.refresh()

    def views(self) -> tuple[list[_views.TaskView], _views.GroupView | None]:
        with self._lock:
            if self.model.root.tally is None:  # one task: its own view
                snap = self.model.overrides.get(self.model.root.leaf_id) or self.monitor.snapshot(self.model.root.leaf_id)
                return [_views.task_view(snap)], None
            return [], self.model.root.tally.view()

    def unfinished_ids(self) -> list[str]:
        with self._lock:
            return self.model.unfinished(self.model.root)

    def text(self) -> str:
        with self._lock:
            lines = [self.model.text()]
        if not self.finished and not self.monitor.connected:
            from celerynb.display._base import DISCONNECTED

            lines.append(DISCONNECTED)
        return "\n".join(lines)

    def summary_html(self) -> str:
        with self._lock:
            rows, more = self.model.rows()
        return render("canvas_tree", rows=rows, more=more, elapsed=_views.format_duration(self.elapsed()))

    def output_metadata(self) -> dict[str, Any]:
        """The ids (a flat progress can always come back) and, up to :data:`SAVED_TREE_MAX`
        tasks, the tree's shape: ``%celery reattach`` rebuilds the tree."""
        meta = saved.output_metadata("tree", self.ids, self.app, self.finished)
        if len(self.ids) <= SAVED_TREE_MAX:
            meta[saved.KEY]["tree"] = self.canvas.to_dict()
        return meta

    def _block(self, timeout: float | None) -> None:
        """Until the tree ended: tasks it ended itself (never sent) are not waited for."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.unfinished_ids()
            if not left:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(left)} of {len(self.ids)} task(s) still unfinished after {timeout} s.")
            try:
                self.monitor.wait(left, 0.5 if remaining is None else min(remaining, 0.5))
            except TimeoutError:
                pass

    def cancel_node(self, index: int) -> int:
        """Cancel the subtree of row ``index``: its unfinished tasks, sent or not; returns how many."""
        with self._lock:
            node = self.model.nodes[index]
            ids = self.model.unfinished(node)
            pending = [tid for tid in ids if self.model.state(tid).state == "PENDING"]
        cancel_tasks(self.app, ids)
        with self._lock:
            self.model.cancelled(pending)
        self._dirty = True
        self.refresh()
        return len(ids)

    def cancel(self) -> None:
        """Cancel the whole workflow (see :meth:`cancel_node`)."""
        self.cancel_node(self.model.root.index)

    def results(self) -> Any:
        """The workflow's result: a chain's or chord's last step, a group's list (exceptions in place)."""

        def value(shape: Any) -> Any:
            if isinstance(shape, list):
                return [value(s) for s in shape]
            if shape is None:
                return None
            snap = self.monitor.full_snapshot(shape)
            return outcome(snap, self.app)[1] if snap.ready else None

        return value(self.canvas.result_shape())

    def replace_tasks(self, mapping: dict[str, str]) -> None:
        """After ``retry_failed``: the retried tasks in their places (a fresh model)."""
        if not any(tid in mapping for tid in self.ids):
            return
        with self._lock:
            self.canvas.replace_ids(mapping)
            self.model = TreeModel(self.canvas)
        super().replace_tasks(mapping)


class TextTree(TreeMixin, TextProgress):
    """The tree as text: terminals, nbval, CI (deterministic: no ids, no times)."""

    def __init__(self, tree: CanvasNode, app: Celery | None = None) -> None:
        ProgressDisplay.__init__(self, self._setup_tree(tree), app)

    def _repr_html_(self) -> str | None:
        from celerynb.config import noninteractive

        return None if noninteractive() else self.summary_html()


class WidgetTree(TreeMixin, WidgetOutput, ProgressDisplay):
    """ipywidgets rows from a fixed pool: toggle, name, bar, Cancel, detail."""

    def __init__(self, tree: CanvasNode, app: Celery | None = None) -> None:
        import ipywidgets as w

        self._handle_id = None
        self._shown_in = None
        self.pool: list[tuple[Any, ...]] = []
        self._row_of: list[int] = []
        self.rows_box = w.VBox()
        self.more_label = w.Label()
        self.clock = w.Label()
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning",
                                      tooltip="Cancel the whole workflow")
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.retry_button = w.Button(description="Retry failed", icon="redo", button_style="info",
                                     layout=w.Layout(display="none"))
        self.retry_button.on_click(lambda _b: self._retry_clicked())
        for button in (self.cancel_button, self.retry_button):
            _compat.act_on_clicks_at_once(button)
        self.box = w.VBox([self.rows_box, self.more_label, w.HBox([self.cancel_button, self.retry_button, self.clock])])
        self.box.add_class("celerynb-progress")
        self.box.add_class("celerynb-tree")
        self._failed = 0
        ProgressDisplay.__init__(self, self._setup_tree(tree), app)

    def _pool_row(self, position: int) -> tuple[Any, ...]:
        """Row widgets ``position`` of the pool, made on first use (never more than MAX_ROWS)."""
        import ipywidgets as w

        while len(self.pool) <= position:
            i = len(self.pool)
            toggle = w.Button(layout=w.Layout(width="28px", padding="0"), tooltip="Collapse / expand")
            toggle.on_click(lambda _b, i=i: self._toggle(i))
            name = w.HTML(layout=w.Layout(width="300px", min_width="300px"))
            bar = w.FloatProgress(value=0, min=0, max=100, layout=w.Layout(width="200px", min_width="200px"))
            stop = w.Button(icon="stop", tooltip="Cancel this subtree", layout=w.Layout(width="32px"))
            stop.on_click(lambda _b, i=i: self._cancel_row(i))
            for button in (toggle, stop):
                _compat.act_on_clicks_at_once(button)
            detail = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0"))
            box = w.HBox([toggle, name, bar, stop, detail], layout=w.Layout(align_items="center"))
            self.pool.append((box, toggle, name, bar, stop, detail))
        return self.pool[position]

    def _toggle(self, position: int) -> None:
        if position < len(self._row_of):
            with self._lock:
                self.model.toggle(self._row_of[position])
            self._dirty = True
            self._redraw_rows()

    def _cancel_row(self, position: int) -> None:
        if position < len(self._row_of):
            self.cancel_node(self._row_of[position])

    def draw(self, views: list[_views.TaskView], group: _views.GroupView | None) -> None:
        self._redraw_rows()
        percent = group.percent if group is not None else views[0].percent
        self.clock.value = self.clock_text(percent)
        self.cancel_button.layout.display = "none" if self.finished else None
        self._failed = self.failed_count()
        self.retry_button.layout.display = None if self._failed else "none"
        self.retry_button.description = f"Retry failed ({self._failed})"

    def _redraw_rows(self) -> None:
        with self._lock:
            rows, more = self.model.rows()
            self._row_of = [r.index for r in rows]
        boxes = []
        for position, row in enumerate(rows):
            box, toggle, name, bar, stop, detail = self._pool_row(position)
            toggle.icon = ("caret-down" if row.expanded else "caret-right") if row.expandable else ""
            toggle.layout.visibility = "visible" if row.expandable else "hidden"
            html = render("tree_label", row=row)
            if name.value != html:
                name.value = html
            bar.value, bar.bar_style = row.fill, row.bar_style
            stop.layout.visibility = "hidden" if row.ready else "visible"
            html = render("tree_detail", row=row)
            if detail.value != html:
                detail.value = html
            boxes.append(box)
        if tuple(boxes) != tuple(self.rows_box.children):
            self.rows_box.children = tuple(boxes)
        self.more_label.value = f"({more} more rows: collapse a node to see them)" if more else ""


def tree_display(tree: CanvasNode, app: Celery | None, use_widget: bool) -> ProgressDisplay:
    """A tree display: the widget inside a kernel, the text twin elsewhere."""
    return (WidgetTree if use_widget else TextTree)(tree, app)
