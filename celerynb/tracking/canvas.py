"""The shape of a Celery workflow (chain, group, chord, any nesting) as a tree of task ids.

Two sources, checked on Celery 5.5:

- **A signature** (the best): frozen before it is sent, every task of it has its id, and
  ``apply_async`` keeps those ids, whatever Celery rewrites (``chain(group, chord)`` becomes
  a chord whose body is a chord). Read through the signature's public dict form
  (``subtask_type``, ``tasks``, ``body``, ``options.task_id``), no private class.
- **A result** already sent: chain steps through ``AsyncResult.parent``, groups through
  ``GroupResult.results``, a chord as its body whose parent is the header ``GroupResult``.
  Celery's result of a nested chord does not reach the inner chords' headers: they show as
  their bodies only (pass the signature to see them).

The workflows this kernel submitted are remembered (:data:`workflows`), so a ``TaskTable`` can
say which workflow a row belongs to before the task stored anything.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.canvas import Signature, maybe_signature
from celery.result import AsyncResult, GroupResult, ResultSet

#: Node kinds: a task (leaf), steps one after another (chain, chord = header then body), or at once (group).
TASK, CHAIN, GROUP, CHORD = "task", "chain", "group", "chord"
SEQUENTIAL = (CHAIN, CHORD)


@dataclass
class CanvasNode:
    """One node of a workflow: a task (``task_id`` is its id) or a chain/group/chord of children."""

    kind: str
    task_id: str | None = None
    name: str | None = None
    children: list[CanvasNode] = field(default_factory=list)

    def leaf_ids(self) -> list[str]:
        """Every task id under this node, in order (depth first)."""
        if self.kind == TASK:
            return [self.task_id] if self.task_id else []
        out: list[str] = []
        stack = [self]
        while stack:  # iterative: a 10,000-member group nests nothing, but a deep chain may
            node = stack.pop()
            if node.kind == TASK:
                if node.task_id:
                    out.append(node.task_id)
            else:
                stack.extend(reversed(node.children))
        return out

    def result_shape(self) -> Any:
        """The ids whose values are this node's result: a chain's/chord's last step, a group's list."""
        if self.kind == TASK:
            return self.task_id
        if self.kind == GROUP:
            return [child.result_shape() for child in self.children]
        return self.children[-1].result_shape() if self.children else None

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON (saved output metadata): ``{"k": kind, "id": ..., "n": name, "c": [...]}``."""
        data: dict[str, Any] = {"k": self.kind}
        if self.task_id:
            data["id"] = self.task_id
        if self.name:
            data["n"] = self.name
        if self.children:
            data["c"] = [child.to_dict() for child in self.children]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanvasNode:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` on anything else."""
        if not isinstance(data, dict) or data.get("k") not in (TASK, CHAIN, GROUP, CHORD):
            raise ValueError("not a celerynb canvas tree")
        children = [cls.from_dict(c) for c in data.get("c") or []]
        return cls(kind=data["k"], task_id=data.get("id"), name=data.get("n"), children=children)

    def replace_ids(self, mapping: dict[str, str]) -> None:
        """Leaves ``old`` become ``mapping[old]`` (their retries)."""
        for node in self.walk():
            if node.kind == TASK and node.task_id in mapping:
                node.task_id = mapping[node.task_id]

    def walk(self) -> list[CanvasNode]:
        """This node and every node under it, depth first."""
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out


def is_canvas(value: Any) -> bool:
    """A signature of any kind, or a result with structure (a chain's parent, a nested group)."""
    if isinstance(value, Signature):
        return True
    if isinstance(value, GroupResult):
        return any(_structured(r) for r in value.results)
    return isinstance(value, AsyncResult) and value.parent is not None


def _structured(result: Any) -> bool:
    return isinstance(result, ResultSet) or (isinstance(result, AsyncResult) and result.parent is not None)


def _kind(sig: Signature) -> str:
    return {"chain": CHAIN, "group": GROUP, "chord": CHORD}.get(sig.get("subtask_type") or "", TASK)


def _members(sig: Signature, app: Celery | None) -> list[Signature]:
    tasks = sig.tasks
    if isinstance(tasks, dict):  # a chord's header kept as a group's dict
        tasks = maybe_signature(tasks, app=app)
    if isinstance(tasks, Signature) and tasks.get("subtask_type") == "group":
        tasks = tasks.tasks
    return [maybe_signature(t, app=app) for t in tasks]


def from_signature(sig: Signature, app: Celery | None = None) -> CanvasNode:
    """The tree of a (frozen) signature: chains and groups their members, a chord its header
    (a group node) then its body."""
    sig = maybe_signature(sig, app=app)
    kind = _kind(sig)
    if kind == TASK:
        return CanvasNode(TASK, task_id=sig.id, name=sig.task)
    if kind == CHORD:
        header = CanvasNode(GROUP, task_id=None, children=[from_signature(t, app) for t in _members(sig, app)])
        return CanvasNode(CHORD, task_id=sig.id, children=[header, from_signature(sig.body, app)])
    node = CanvasNode(kind, task_id=sig.id, children=[from_signature(t, app) for t in _members(sig, app)])
    return _flatten_chains(node)


def _flatten_chains(node: CanvasNode) -> CanvasNode:
    """A chain inside a chain is one chain (Celery nests them when ``|`` is applied step by step)."""
    if node.kind != CHAIN:
        return node
    steps: list[CanvasNode] = []
    for child in node.children:
        steps.extend(child.children if child.kind == CHAIN else [child])
    node.children = steps
    return node


def from_result(result: AsyncResult | ResultSet) -> CanvasNode:
    """The tree a result's links give (see the module docstring for what they cannot)."""
    steps: list[CanvasNode] = []
    current: Any = result
    while current is not None:
        if isinstance(current, ResultSet):
            node = CanvasNode(GROUP, task_id=getattr(current, "id", None),
                              children=[from_result(r) for r in current.results])
        else:
            node = CanvasNode(TASK, task_id=current.id)
        steps.append(node)
        current = getattr(current, "parent", None)
    steps.reverse()
    if len(steps) == 1:
        return steps[0]
    if len(steps) == 2 and steps[0].kind == GROUP and steps[1].kind == TASK:
        return CanvasNode(CHORD, task_id=steps[1].task_id, children=steps)
    return CanvasNode(CHAIN, task_id=steps[-1].task_id if steps[-1].kind == TASK else None, children=steps)


def submit(sig: Signature, app: Celery | None = None, **options: Any) -> tuple[CanvasNode, Any]:
    """Freeze ``sig`` (every task gets its id), read its tree, then send it: (tree, its result)."""
    sig.freeze()
    tree = from_signature(sig, app)
    result = sig.apply_async(**options)
    remember(tree, result.id)
    return tree, result


def tree_of(value: Any, app: Celery | None = None) -> tuple[CanvasNode, Any]:
    """(tree, result) of a signature (sent now) or of a result already sent."""
    if isinstance(value, Signature):
        return submit(value, app)
    tree = from_result(value)
    remember(tree, value.id)
    return tree, value


class Workflows:
    """Task id -> (the node of the workflow holding it, the workflow's id), for workflows this
    kernel submitted or followed; bounded (the oldest workflows are forgotten)."""

    def __init__(self, max_tasks: int = 200_000) -> None:
        self.max_tasks = max_tasks
        self._of: dict[str, tuple[str | None, str]] = {}
        self._lock = threading.Lock()

    def remember(self, tree: CanvasNode, root_id: str) -> None:
        found: dict[str, tuple[str | None, str]] = {}
        stack: list[tuple[CanvasNode, str | None]] = [(tree, None)]
        while stack:
            node, parent = stack.pop()
            if node.kind == TASK and node.task_id:
                found[node.task_id] = (parent, root_id)
            for child in node.children:
                stack.append((child, node.task_id or parent))
        with self._lock:
            self._of.update(found)
            if len(self._of) > self.max_tasks:
                for tid in list(self._of)[: len(self._of) - self.max_tasks]:
                    del self._of[tid]

    def get(self, task_id: str) -> tuple[str | None, str] | None:
        """(enclosing node id, workflow id), or None for a task of no known workflow."""
        return self._of.get(task_id)


workflows = Workflows()


def remember(tree: CanvasNode, root_id: str) -> None:
    workflows.remember(tree, root_id)
