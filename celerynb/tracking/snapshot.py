"""What is known of one task: an immutable snapshot, replaced as new states arrive.

Shared by the monitor, every display and the awaitables; ``LOST`` is celerynb's own end state
for a task whose message is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from celery import states

from celerynb.tracking.submitted import submitted

#: Not a Celery state: a task queued or unseen when the server restarted without persistence.
#: Its message is gone, so it will never run: displays end instead of waiting forever.
LOST = "LOST"
#: Not a Celery state either: the worker running this task died. Not an end: the task was
#: requeued (or waits for a worker), so displays go on following it.
WORKER_LOST = "WORKER_LOST"
MOVED_INFO = ("the app now uses another server (the cluster this task was sent to was stopped): "
              "its state can no longer be followed")
EXPIRED_INFO = ("its result is no longer kept (results expire after result_expires, 24 h by default), "
                "or the app now uses another server")
LOST_INFO = ("the server restarted without persistence and this task's message was lost: "
             "submit it again (LocalCluster(persistent=True) keeps queued tasks across restarts)")


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """Immutable view of one task's latest known state.

    ``info`` is the decoded JSON document's ``result`` field: the PROGRESS meta dict, the return
    value, or the exception description (``exc_type``, ``exc_message``) of a failure.
    """

    task_id: str
    state: str = states.PENDING
    info: Any = None
    name: str | None = None
    args: Any = None
    kwargs: Any = None
    worker: str | None = None
    queue: str | None = None  # the routing key it was delivered with (extended results)
    retries: int | None = None
    date_done: str | None = None
    #: When the task started (epoch seconds) and how long it ran (seconds), as its worker
    #: stored them (celerynb's tasks; None for others).
    started: float | None = None
    runtime: float | None = None
    received_at: float = 0.0
    traceback: str | None = None
    redeliveries: int = 0
    #: The result was dropped from memory (see :mod:`celerynb.tracking.retention`): read it again.
    trimmed: bool = False
    #: Celery's ids of the task that sent this one and of its workflow's first task (extended results;
    #: ``root_id`` as celerynb's app stores it).
    parent_id: str | None = None
    root_id: str | None = None

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES or self.state == LOST

    @classmethod
    def from_meta(cls, task_id: str, meta: dict[str, Any] | None) -> TaskSnapshot:
        """Build a snapshot from a decoded result document (None means "no key": PENDING)."""
        now = time.monotonic()
        if not meta:
            return cls(task_id=task_id, received_at=now)
        return cls(
            task_id=task_id,
            state=meta.get("status") or states.PENDING,
            info=meta.get("result"),
            name=meta.get("name"),
            args=meta.get("args"),
            kwargs=meta.get("kwargs"),
            worker=meta.get("worker"),
            queue=meta.get("queue"),
            retries=meta.get("retries"),
            date_done=_text(meta.get("date_done")),
            started=_number(meta.get("date_started")),
            runtime=_number(meta.get("runtime")),
            received_at=now,
            traceback=meta.get("traceback"),
            parent_id=_text(meta.get("parent_id")),
            root_id=_text(meta.get("root_id")),
        )


def replace_state(snap: TaskSnapshot, state: str, info: Any) -> TaskSnapshot:
    return replace(snap, state=state, info=info, received_at=time.monotonic())


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None



def task_name(task_id: str, snapshot: TaskSnapshot | None = None) -> str | None:
    """Best known name: the backend's extended result, else what this process published."""
    if snapshot is not None and snapshot.name:
        return snapshot.name
    entry = submitted.get(task_id)
    return entry.name if entry else None
