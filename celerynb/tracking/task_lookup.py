"""Where is a task? "queued (position N)", running, ended, or "unknown": what Celery's PENDING hides.

Celery answers PENDING for a task waiting in a queue and for an id no one ever sent
(celery/celery#4450). The cluster monitor tells them apart: its events, then the broker's
queues (Redis: read without consuming), then the result backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celerynb.tracking.broker_queues import QueueReader
from celerynb.tracking.cluster_events import ClusterEvents, TaskRecord

UNKNOWN = "unknown"
QUEUED = "queued"
#: Said of an id not seen when the broker's queues cannot be read without consuming them.
AMQP_NOTE = "AMQP queues cannot be read without consuming: a task waiting there shows once a worker receives it"


@dataclass(frozen=True)
class TaskWhere:
    """What the cluster knows of one task id.

    ``state`` is a Celery state, ``"queued"`` (waiting in ``queue``; ``position`` 1 runs next,
    None when the broker cannot say) or ``"unknown"``; ``source`` says who told:
    ``"events"``, ``"queue"``, ``"backend"`` or None.
    """

    task_id: str
    state: str
    name: str | None = None
    queue: str | None = None
    position: int | None = None
    worker: str | None = None
    source: str | None = None
    note: str | None = None

    def __str__(self) -> str:
        if self.state == QUEUED:
            where = f" in {self.queue!r}" if self.queue else ""
            text = f"queued (position {self.position}{where})" if self.position else f"queued{where}"
        elif self.state == UNKNOWN:
            text = UNKNOWN
        else:
            text = self.state + (f" on {self.worker}" if self.worker else "")
        return text + (f" ({self.note})" if self.note else "")


def describe(events: ClusterEvents, task_id: str) -> TaskWhere:
    """Where ``task_id`` is now: events, then the queues, then the result backend; else unknown."""
    task_id = str(task_id)
    record = events.task(task_id)
    if record is not None and record.state not in ("PENDING",):
        return _from_record(record)
    reader = QueueReader(events.app)
    try:
        names = events.queue_names()
        if record is not None and record.queue and record.queue not in names:
            names.insert(0, record.queue)
        waiting = reader.find(task_id, names)
        can_peek = reader.can_peek
    finally:
        reader.close()
    if waiting is not None:
        return TaskWhere(task_id, QUEUED, waiting.name, waiting.queue, waiting.position, source="queue")
    if record is not None:  # sent (its task-sent event), not yet received by a worker
        return TaskWhere(task_id, QUEUED, record.name, record.queue, source="events",
                         note=None if can_peek else AMQP_NOTE)
    stored = _stored(events.app, task_id)
    if stored is not None:
        return stored
    return TaskWhere(task_id, UNKNOWN, note=None if can_peek else AMQP_NOTE)


def _from_record(record: TaskRecord) -> TaskWhere:
    return TaskWhere(record.task_id, record.state, record.name, record.queue, worker=record.worker, source="events")


def _stored(app: Any, task_id: str) -> TaskWhere | None:
    """The state the result backend keeps (a task that ended before the monitor started)."""
    from celerynb.tracking.backend_source import BackendNotObservable, check_observable

    try:
        check_observable(app)
        meta = app.backend.get_task_meta(task_id)
    except (BackendNotObservable, Exception):  # noqa: BLE001 - no readable backend: nothing stored to say
        return None
    state = (meta or {}).get("status")
    if not state or state == "PENDING":
        return None
    return TaskWhere(task_id, state, meta.get("name"), meta.get("queue"), worker=meta.get("worker"), source="backend")
