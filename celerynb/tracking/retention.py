"""How long the monitor remembers finished tasks: bounded, so that a kernel that ran a million
tasks holds about as much as one that ran ten thousand.

A finished task stays in memory while something needs it (a display or a waiter following its
id: "pinned"), and otherwise only among the newest :data:`KEEP_FINISHED` finished tasks. A
large result (over :data:`BIG_RESULT` bytes as stored) is not kept at all once nothing pins it:
its snapshot is marked ``trimmed`` and read again from the backend when asked for, so a 100 MB
return value is freed when the user drops it, not ten thousand tasks later.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from celerynb.tracking.snapshot import TaskSnapshot

#: Finished, unpinned tasks remembered (the newest ones); older ones are read again on demand.
KEEP_FINISHED = 10_000
#: Stored results larger than this (bytes) are not kept once nothing pins their task.
BIG_RESULT = 256 * 1024


class FinishedTasks:
    """Finish order of the tasks the monitor remembers, and the rule for forgetting them.

    Not thread-safe on its own: the monitor calls it under its lock.
    """

    def __init__(self, keep: int = KEEP_FINISHED, big: int = BIG_RESULT) -> None:
        self.keep = keep
        self.big = big
        self._order: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def finished(self, snapshot: TaskSnapshot, size: int, pinned: bool) -> TaskSnapshot:
        """Record a task that just finished; returns the snapshot to keep (trimmed if big).

        A pinned task is not queued for forgetting until :meth:`released`."""
        if pinned:
            return snapshot
        return self.released(snapshot, size)

    def released(self, snapshot: TaskSnapshot, size: int) -> TaskSnapshot:
        """Nothing pins this finished task any more: queue it for forgetting, drop a big result."""
        self._order[snapshot.task_id] = None
        self._order.move_to_end(snapshot.task_id)
        return trim(snapshot) if size > self.big else snapshot

    def evict(self, is_pinned: Callable[[str], bool], forget: Callable[[str], None]) -> None:
        """Forget the oldest finished tasks beyond ``keep`` (a task pinned again since it was
        released leaves the queue; its next release queues it again)."""
        while len(self._order) > self.keep:
            tid, _ = self._order.popitem(last=False)
            if not is_pinned(tid):
                forget(tid)


def trim(snapshot: TaskSnapshot) -> TaskSnapshot:
    """The snapshot without its (large) result and arguments; ``trimmed`` says to read it again."""
    if snapshot.trimmed:
        return snapshot
    return replace(snapshot, info=None, args=None, kwargs=None, traceback=None, trimmed=True)
