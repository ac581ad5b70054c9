"""What a canvas tree shows, kept up to date one task change at a time: no widgets, no I/O.

Every inner node (chain, group, chord, a chord's header) counts its tasks with a
:class:`~celerynb.display.tally.GroupTally` (states, and the running tasks' own PROGRESS), so
a change costs one update per ancestor and a redraw looks at the shown rows only, whatever the
size. A node with more than :data:`MAX_CHILDREN` children shows the first ones and one
"+N more" node that counts the rest; at most :data:`MAX_ROWS` rows are drawn.

Two things Celery leaves PENDING forever are ended here, so the tree finishes: the steps after
a chain/chord step that did not succeed (Celery marks plain tasks of a failed chain FAILURE
itself, not a group or a chord that follows), and the tasks of a cancelled subtree that were
never sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from celery import states

from celerynb.display import _views
from celerynb.display.tally import FAILED, GroupTally
from celerynb.tracking.canvas import CHAIN, CHORD, GROUP, SEQUENTIAL, TASK, CanvasNode
from celerynb.tracking.snapshot import TaskSnapshot, task_name

#: Children shown per node; the rest become one "+N more" node with their counts.
MAX_CHILDREN = 6
#: Rows drawn (widgets in the pool, lines of text): the tree's size on screen is bounded.
MAX_ROWS = 24
#: Why a task shows REVOKED without having been revoked.
NOT_RUN_INFO = "not run: an earlier step of its chain or chord did not succeed"
CANCELLED_INFO = "cancelled before it was sent"
MORE = "more"


@dataclass
class Node:
    """One shown node: a task (``leaf_id``) or an inner node with its tally."""

    index: int
    kind: str
    depth: int
    role: str = ""  # "header" / "body" inside a chord
    canvas: CanvasNode | None = None
    leaf_id: str | None = None
    tally: GroupTally | None = None
    children: list[Node] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)  # every task under it (inner nodes)
    hidden: int = 0  # a "+N more" node: how many siblings it stands for
    not_run: int = 0  # tasks under it that end NOT RUN (stored as REVOKED, counted apart)


@dataclass(frozen=True)
class RowView:
    """One drawn row: indentation, label, bar and a deterministic detail (no ids, no times)."""

    index: int
    depth: int
    label: str
    percent: float
    fill: float
    bar_style: str
    detail: str
    ready: bool
    expandable: bool
    expanded: bool
    task_id: str | None = None

    @property
    def badge(self) -> str:
        """A task row's state badge (``NOT RUN`` is two words); empty for inner rows."""
        if not self.task_id:
            return ""
        return "NOT RUN" if self.detail.startswith("NOT RUN") else self.detail.split(" ")[0]

    @property
    def note(self) -> str:
        return self.detail[len(self.badge):].strip()


class TreeModel:
    """The live state of a workflow tree; not thread-safe (the display calls it under its lock)."""

    def __init__(self, root: CanvasNode, max_children: int = MAX_CHILDREN, max_rows: int = MAX_ROWS) -> None:
        self.canvas = root
        self.max_children = max_children
        self.max_rows = max_rows
        self.nodes: list[Node] = []
        self.ancestors: dict[str, list[Node]] = {}  # task id -> the inner nodes counting it
        self.snaps: dict[str, TaskSnapshot] = {}  # shown leaves' latest snapshots
        self.overrides: dict[str, TaskSnapshot] = {}  # ended here (not run / cancelled unsent)
        self.ready: set[str] = set()
        # Sequential steps: (id of the chain/chord canvas node, step) -> [unfinished, failed?]
        self._steps: dict[tuple[int, int], list] = {}
        self._step_of: dict[str, list[tuple[CanvasNode, int]]] = {}
        self._names: dict[str, str] = {}  # task id -> its name in the signature, if it had one
        self.collapsed: set[int] = set()
        self.root = self._build(root, 0, [], "")
        self._index_steps(root)
        self.ids = root.leaf_ids()

    # -- building --------------------------------------------------------------------------
    def _new(self, **kw) -> Node:
        node = Node(index=len(self.nodes), **kw)
        self.nodes.append(node)
        return node

    def _build(self, canvas: CanvasNode, depth: int, above: list[Node], role: str) -> Node:
        if canvas.kind == TASK:
            node = self._new(kind=TASK, depth=depth, role=role, canvas=canvas, leaf_id=canvas.task_id)
            self.ancestors.setdefault(canvas.task_id, []).extend(above)
            return node
        leaves = canvas.leaf_ids()
        node = self._new(kind=canvas.kind, depth=depth, role=role, canvas=canvas, tally=GroupTally(leaves),
                         leaves=leaves)
        chain = above + [node]
        kids = canvas.children
        shown = kids if len(kids) <= self.max_children else kids[: self.max_children - 1]
        for position, child in enumerate(shown):
            child_role = ("header" if position == 0 else "body") if canvas.kind == CHORD else ""
            node.children.append(self._build(child, depth + 1, chain, child_role))
        if len(shown) < len(kids):
            rest = [tid for child in kids[len(shown):] for tid in child.leaf_ids()]
            more = self._new(kind=MORE, depth=depth + 1, tally=GroupTally(rest), leaves=rest,
                             hidden=len(kids) - len(shown))
            node.children.append(more)
            for tid in rest:
                self.ancestors.setdefault(tid, []).extend(chain + [more])
        return node

    def _index_steps(self, root: CanvasNode) -> None:
        """For each task, the sequential steps it belongs to (iterative: deep chains are fine)."""
        stack: list[tuple[CanvasNode, list[tuple[CanvasNode, int]]]] = [(root, [])]
        while stack:
            canvas, path = stack.pop()
            if canvas.kind == TASK:
                if canvas.name:
                    self._names[canvas.task_id] = canvas.name
                if path:
                    self._step_of[canvas.task_id] = path
                continue
            for position, child in enumerate(canvas.children):
                if canvas.kind in SEQUENTIAL:
                    key = (id(canvas), position)
                    self._steps[key] = [len(child.leaf_ids()), False]
                    stack.append((child, path + [(canvas, position)]))
                else:
                    stack.append((child, path))

    # -- updates ---------------------------------------------------------------------------
    def update(self, snap: TaskSnapshot) -> None:
        """A task's new state (from the monitor); a real state replaces one ended here."""
        tid = snap.task_id
        if tid not in self.ancestors:
            return
        if tid in self.overrides:
            if snap.state == states.PENDING:
                return
            del self.overrides[tid]
        self._apply(snap)

    def _apply(self, snap: TaskSnapshot) -> None:
        tid = snap.task_id
        name = task_name(tid, snap) or self._canvas_name(tid)
        for node in self.ancestors[tid]:
            node.tally.update(snap, name)
        self.snaps[tid] = snap
        if snap.ready and tid not in self.ready:
            self.ready.add(tid)
            for canvas, position in self._step_of.get(tid, ()):
                step = self._steps[(id(canvas), position)]
                step[0] -= 1
                step[1] = step[1] or snap.state != states.SUCCESS
                if step[0] == 0 and step[1]:
                    self._not_run(canvas, position)

    def _not_run(self, canvas: CanvasNode, position: int) -> None:
        """The steps after ``position`` will never be sent: their PENDING tasks end here."""
        for later in canvas.children[position + 1:]:
            for tid in later.leaf_ids():
                self._end_pending(tid, NOT_RUN_INFO)

    def _end_pending(self, tid: str, why: str) -> None:
        snap = self.snaps.get(tid)
        if tid in self.ready or (snap is not None and snap.state != states.PENDING):
            return
        ended = TaskSnapshot(task_id=tid, state=states.REVOKED, info=why, name=snap.name if snap else None)
        self.overrides[tid] = ended
        if why == NOT_RUN_INFO:
            for node in self.ancestors.get(tid, ()):
                node.not_run += 1
        self._apply(ended)

    def cancelled(self, pending: list[str]) -> None:
        """``pending`` were cancelled before any state of theirs was known: they end now (revoked,
        a queued one never runs; one never sent never will be)."""
        for tid in pending:
            self._end_pending(tid, CANCELLED_INFO)

    def _canvas_name(self, tid: str) -> str | None:
        return self._names.get(tid)

    # -- reading ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.root.tally.finished if self.root.tally is not None else self.root.leaf_id in self.ready

    def state(self, tid: str) -> TaskSnapshot:
        return self.snaps.get(tid) or TaskSnapshot(task_id=tid)

    def unfinished(self, node: Node) -> list[str]:
        """The tasks under ``node`` still to end (what its Cancel stops)."""
        if node.kind == TASK:
            return [] if node.leaf_id in self.ready else [node.leaf_id]
        return [tid for tid in node.leaves if tid not in self.ready]

    def toggle(self, index: int) -> None:
        """Collapse an expanded node, expand a collapsed one."""
        self.collapsed ^= {index}

    def rows(self) -> tuple[list[RowView], int]:
        """The rows to draw (depth first, collapsed nodes' children skipped, at most ``max_rows``),
        and how many more rows there would be."""
        out: list[RowView] = []
        stack = [self.root]
        more = 0
        while stack:
            node = stack.pop()
            if len(out) >= self.max_rows:
                more += 1
                continue
            out.append(self.row(node))
            if node.children and node.index not in self.collapsed:
                stack.extend(reversed(node.children))
        return out, more

    def row(self, node: Node) -> RowView:
        if node.kind == TASK:
            return self._leaf_row(node)
        group = node.tally.view()
        style = "danger" if any(group.counts.get(s) for s in FAILED) else group.bar_style
        if node.not_run:  # the same words as its rows: NOT RUN, not REVOKED
            counts = dict(group.counts)
            counts["REVOKED"] = counts.get("REVOKED", 0) - node.not_run
            counts = {state: n for state, n in counts.items() if n > 0} | {"NOT RUN": node.not_run}
            group = replace(group, counts=counts)
        detail = f"{group.done}/{group.total} done · {_views.counts_text(group)}"
        return RowView(index=node.index, depth=node.depth, label=self.label(node), percent=group.percent,
                       fill=group.percent, bar_style=style, detail=detail, ready=group.ready,
                       expandable=bool(node.children), expanded=node.index not in self.collapsed)

    def _leaf_row(self, node: Node) -> RowView:
        snap = self.overrides.get(node.leaf_id) or self.state(node.leaf_id)
        name = task_name(node.leaf_id, snap) or self._canvas_name(node.leaf_id)
        view = _views.task_view(snap, 0.0, name)
        detail = view.detail
        if snap.info == NOT_RUN_INFO:
            detail = "NOT RUN (an earlier step did not succeed)"
        elif snap.info == CANCELLED_INFO:
            detail = "REVOKED (cancelled before it ran)"
        label = f"{node.role}: {view.name}" if node.role else view.name
        return RowView(index=node.index, depth=node.depth, label=label, percent=view.percent, fill=view.fill,
                       bar_style=view.bar_style, detail=detail, ready=view.ready, expandable=False,
                       expanded=False, task_id=node.leaf_id)

    def label(self, node: Node) -> str:
        """``chain (3 steps)``, ``group (4 tasks)``, ``chord``, ``header: group (2 tasks)``, ``+9,994 more``."""
        total = len(node.leaves)
        if node.kind == MORE:
            return f"+{node.hidden:,} more ({total:,} task{'s' if total != 1 else ''})"
        count = len(node.canvas.children) if node.canvas else 0
        text = {CHAIN: f"chain ({count} steps)", GROUP: f"group ({count:,} members)",
                CHORD: "chord"}.get(node.kind, node.kind)
        if node.kind != GROUP or count != total:
            text += f" · {total:,} task{'s' if total != 1 else ''}"
        return f"{node.role}: {text}" if node.role else text

    def text(self) -> str:
        """Deterministic text of the drawn rows: indentation, label, bar, detail."""
        rows, more = self.rows()
        lines = [f"{'  ' * r.depth}{r.label}: {r.percent:3.0f}% {_views.text_bar(r.percent)} {r.detail}" for r in rows]
        if more:
            lines.append(f"({more} more rows not shown)")
        return "\n".join(lines)
