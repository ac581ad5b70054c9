"""A worker process of the local cluster died (killed, out of memory): say so, and give the
messages it held back to the queue at once.

kombu's Redis transport keeps a delivered message in its ``unacked`` hash until the worker
acknowledges it; a worker that dies never does, and kombu restores such a message only after
the visibility timeout (an hour by default), so a task declared ``acks_late`` waits that long
to be redelivered. The local cluster knows when a worker process it started has died, so it
restores what that worker held: every unacknowledged message whose task no live worker holds.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, states

from celerynb import _compat

logger = logging.getLogger("celerynb")

#: Seconds to wait for the live worker processes to say which tasks they hold.
ASK_TIMEOUT = 1.0


@dataclass
class WorkerLoss:
    """One dead worker process: its name, and the tasks given back to the queue for it."""

    hostname: str
    exit_code: int | None
    requeued: list[str] = field(default_factory=list)


def held_by_live_workers(app: Celery, live_processes: list[str]) -> set[str]:
    """Ids of tasks that live workers hold (running or reserved): in this process, and as the
    live worker processes answer (within :data:`ASK_TIMEOUT`)."""
    held = set(_compat.active_request_ids()) | set(_compat.reserved_request_ids())
    if live_processes:
        inspect = app.control.inspect(destination=live_processes, timeout=ASK_TIMEOUT)
        for replies in (inspect.active() or {}, inspect.reserved() or {}):
            for requests in replies.values():
                held |= {request.get("id") for request in requests or [] if isinstance(request, dict)}
    return held


def requeue_orphans(app: Celery, held: set[str], live_names: AbstractSet[str] = frozenset()) -> list[str]:
    """Restore every unacknowledged message of ``app``'s Redis broker whose task is unfinished
    and held by no live worker; returns the task ids given back.

    A task whose last state names a live worker is left alone even if that worker did not
    answer in time (a solo pool does not answer while it runs a task)."""
    if not (app.conf.broker_url or "").startswith(("redis://", "rediss://", "unix://")):
        return []  # RabbitMQ redelivers by itself when the connection of a dead consumer closes
    requeued = []
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for tag, message in _compat.unacked_messages(channel).items():
            task_id = (message.get("headers") or {}).get("id")
            if not task_id or task_id in held:
                continue
            meta = app.backend.get_task_meta(task_id)
            if meta.get("status") in states.READY_STATES:
                continue  # finished; only the acknowledgement was lost
            if meta.get("worker") in live_names:
                continue
            _compat.restore_unacked(channel, tag)
            requeued.append(task_id)
    return requeued


def recover(app: Celery, dead: list[Any], live: list[Any]) -> list[WorkerLoss]:
    """Report each dead worker process and requeue what the dead held (see the module docstring)."""
    losses = [WorkerLoss(p.name, p.exit_code) for p in dead]
    try:
        names = [p.name for p in live]
        orphans = requeue_orphans(app, held_by_live_workers(app, names), set(names))
    except Exception as exc:  # noqa: BLE001 - the broker may be gone too: report, do not raise
        logger.warning("celerynb: could not requeue the tasks of a dead worker: %s", exc)
        orphans = []
    if losses:
        losses[0].requeued = orphans
    for loss in losses:
        logger.warning("celerynb: worker process %s died (exit %s); requeued %d task(s)",
                       loss.hostname, loss.exit_code, len(loss.requeued))
    return losses
