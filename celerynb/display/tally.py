"""The aggregate of many tasks, kept up to date one change at a time.

A display of 20,000 tasks must not look at 20,000 snapshots per redraw: the tally counts tasks
per state as changes arrive (O(1) each) and keeps the few tasks a display names (failures, a
few running ones), so a redraw costs the same for ten tasks or a hundred thousand.
"""

from __future__ import annotations

import heapq
from collections import Counter

from celery import states

from celerynb.display import _views
from celerynb.tracking.snapshot import LOST, TaskSnapshot

FAILED = frozenset({states.FAILURE, states.REJECTED, LOST})
#: Running tasks named under a big aggregate bar.
RUNNING_SHOWN = 3
#: Failures named under a big aggregate bar (as :func:`_views.group_view`).
FAILURES_SHOWN = 5


def is_ready(state: str) -> bool:
    return state in states.READY_STATES or state == LOST


class GroupTally:
    """Counts per state of a fixed set of tasks; :meth:`update` is O(1), :meth:`view` O(shown).

    Not thread-safe on its own: the display calls it under its lock.
    """

    def __init__(self, task_ids: list[str]) -> None:
        self._index = {tid: i for i, tid in enumerate(task_ids)}
        self.states: dict[str, str] = dict.fromkeys(task_ids, states.PENDING)
        self.counts: Counter[str] = Counter({states.PENDING: len(task_ids)}) if task_ids else Counter()
        self.total = len(task_ids)
        self.done = 0
        self._failures: dict[str, _views.TaskView] = {}
        self._running: dict[str, _views.TaskView] = {}
        self._redelivered: set[str] = set()
        self._percent: dict[str, float] = {}  # unfinished tasks' own progress, summed in partial
        self.partial = 0.0

    def update(self, snap: TaskSnapshot, name: str | None = None) -> bool:
        """Apply one task's new snapshot; False when it changes nothing shown."""
        tid = snap.task_id
        old = self.states.get(tid)
        if old is None:
            return False
        new = snap.state
        if snap.redeliveries:
            self._redelivered.add(tid)
        if new != old:
            self.states[tid] = new
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
            self.counts[new] += 1
            self.done += is_ready(new) - is_ready(old)
        percent = 0.0
        if new in FAILED:
            self._failures[tid] = _views.task_view(snap, 0.0, name)
            self._running.pop(tid, None)
        elif is_ready(new) or new == states.PENDING:
            self._running.pop(tid, None)
            self._failures.pop(tid, None)
        else:
            view = self._running[tid] = _views.task_view(snap, 0.0, name)
            percent = view.percent
        self.partial += percent - self._percent.pop(tid, 0.0)
        if percent:
            self._percent[tid] = percent
        return True

    @property
    def finished(self) -> bool:
        return self.done == self.total

    def unfinished(self) -> list[str]:
        return [tid for tid, state in self.states.items() if not is_ready(state)]

    def running(self) -> list[_views.TaskView]:
        """A few running tasks (the longest known running first)."""
        return list(self._running.values())[:RUNNING_SHOWN]

    def view(self) -> _views.GroupView:
        failed = heapq.nsmallest(FAILURES_SHOWN, self._failures.values(), key=lambda v: self._index[v.task_id])
        return _views.aggregate(self.counts, self.total, self.done, failed, len(self._redelivered), self.partial)
