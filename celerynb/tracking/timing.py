"""When, where and how long each task ran: plain timing records, read in batches.

celerynb's workers store ``date_started`` (epoch seconds), ``runtime`` (seconds) and ``slot``
(``pid/thread`` inside the worker) with every task's state, next to Celery's ``worker`` (the
node name) and ``date_done``; this kernel's submit log knows when each of its tasks was sent.
A :class:`TaskTiming` holds just that, so a timeline can be drawn from these records whatever
fed them (the result backend here; Celery's events later).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery, states

from celerynb.tracking.backend_source import BATCH, BackendSource
from celerynb.tracking.submitted import submitted


@dataclass(frozen=True, slots=True)
class TaskTiming:
    """One task's timing: times are epoch seconds, None where unknown.

    ``sent`` is when the task was published (known for tasks sent from this kernel), ``started``
    and ``ended`` when its body began and ended in the worker, ``worker`` the worker's node name
    and ``slot`` where inside that worker it ran (``pid/thread``: a prefork child, a pool thread).
    """

    task_id: str
    name: str | None = None
    state: str = states.PENDING
    worker: str | None = None
    slot: str | None = None
    sent: float | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def timed(self) -> bool:
        """Whether the worker said when the task started (celerynb's tasks; not a user's own app's)."""
        return self.started is not None

    @property
    def runtime(self) -> float | None:
        return self.ended - self.started if self.started is not None and self.ended is not None else None

    @property
    def wait(self) -> float | None:
        """Seconds between sent and started: time in the queue (and on its way to a slot)."""
        return max(0.0, self.started - self.sent) if self.started is not None and self.sent is not None else None

    @property
    def lane(self) -> tuple[str, str]:
        """The worker slot this task occupied: (worker, slot)."""
        return (self.worker or "?", self.slot or "?")

    @classmethod
    def from_meta(cls, task_id: str, meta: dict[str, Any] | None, sent: float | None = None) -> TaskTiming:
        """From a decoded result document (None: nothing stored yet)."""
        entry = submitted.get(task_id)
        name = entry.name if entry is not None else None
        if not meta:
            return cls(task_id, name=name, sent=sent)
        state = meta.get("status") or states.PENDING
        started = _number(meta.get("date_started"))
        runtime = _number(meta.get("runtime"))
        ended = None
        if started is not None and runtime is not None:
            ended = started + runtime
        elif started is not None and state in states.READY_STATES:
            ended = _epoch(meta.get("date_done"))
        return cls(task_id, name=meta.get("name") or name, state=state, worker=meta.get("worker"),
                   slot=_text(meta.get("slot")), sent=sent, started=started, ended=ended)


def read_timings(app: Celery, task_ids: Iterable[str]) -> list[TaskTiming]:
    """The timing of ``task_ids`` as stored now: one MGET per :data:`BATCH` ids on Redis backends."""
    ids = [str(t) for t in dict.fromkeys(task_ids)]
    source = BackendSource(app)
    found: list[TaskTiming] = []
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        for tid, raw in zip(chunk, source.read(chunk), strict=True):
            entry = submitted.get(tid)
            found.append(TaskTiming.from_meta(tid, source.decode(raw), entry.sent_at if entry else None))
    return found


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _epoch(value: Any) -> float | None:
    """Celery's ``date_done`` (ISO 8601, UTC) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # Celery writes UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def from_event_records(records: Iterable[Any]) -> list[TaskTiming]:
    """Timing records from the cluster monitor's event records (``ClusterEvents.tasks()``).

    Celery's events say which worker ran a task but not in which of its slots, so each worker's
    tasks are packed into lanes (the first lane free when the task started): as many lanes as
    tasks ran at once on that worker, which is what its slots did.
    """
    timed = [r for r in records if getattr(r, "started", None) is not None]
    lanes: dict[str, list[float]] = {}  # worker -> when each of its lanes is free again
    found: list[TaskTiming] = []
    for record in sorted(timed, key=lambda r: r.started):
        ended = record.ended if record.ended is not None else (
            record.started + record.runtime if record.runtime is not None else None)
        free = lanes.setdefault(record.worker or "?", [])
        lane = next((i for i, at in enumerate(free) if at <= record.started), len(free))
        if lane == len(free):
            free.append(0.0)
        free[lane] = ended if ended is not None else float("inf")  # a running task holds its lane
        found.append(TaskTiming(record.task_id, name=record.name, state=record.state, worker=record.worker,
                                slot=f"lane {lane + 1}", sent=record.sent, started=record.started, ended=ended))
    found += [TaskTiming(r.task_id, name=r.name, state=r.state, worker=r.worker, sent=r.sent)
              for r in records if getattr(r, "started", None) is None]
    return found
