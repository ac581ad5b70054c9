"""Celery's task message for every item of one map, with the per-map work done once.

``apply_async`` -> ``send_task`` recompute options, routing and reprs for every call; here they
are computed once per map and each item only builds its message (``amqp.create_task_message``).
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.result import AsyncResult
from celery.utils import uuid
from celery.utils.saferepr import saferepr

from celerynb import _compat


class MapMessages:
    """What ``apply_async`` -> ``send_task`` compute per call but is the same for every item."""

    def __init__(self, task: Task, shared: dict[str, Any], options: dict[str, Any], opts: dict[str, Any]) -> None:
        app = task.app
        amqp = app.amqp
        self.shared, self.options, self.name = shared, options, task.name
        self.time_limit = opts.pop("time_limit", None)
        self.soft_time_limit = opts.pop("soft_time_limit", None)
        opts.pop("expires", None)
        self.ignore_result = opts.pop("ignore_result", None)
        self.routed = amqp.router.route(opts, task.name, (), shared, task)
        self.reply_to = app.thread_oid
        self.sent_event = app.conf.task_send_sent_event
        self.check = getattr(task, "__header__", None) if task.typing else None
        self.task = task
        self.create, self.publish = amqp.create_task_message, amqp.send_task_message
        self.maxsize = amqp.argsrepr_maxsize
        self.maxlevels = app.conf.task_repr_maxlevels
        self.kwargsrepr = saferepr(shared, amqp.kwargsrepr_maxsize, maxlevels=self.maxlevels)
        self.shadow_name = task.shadow_name
        self.plain_shadow = type(task).shadow_name is _base_shadow_name()

    def message(self, task_id: str, args: tuple[Any, ...]) -> Any:
        """Celery's own task message for one call (``amqp.create_task_message``)."""
        if self.check is not None:
            self.check(*args, **self.shared)
        shadow = self.shadow_name(args, self.shared, self.options)
        return self.create(task_id, self.name, args, self.shared, None, None, None, None, None, 0, None, None,
                           None, self.reply_to, self.time_limit, self.soft_time_limit, self.sent_event, None,
                           None, shadow, None, ignore_result=self.ignore_result, replaced_task_nesting=0,
                           argsrepr=plain_repr(args, self.maxsize), kwargsrepr=self.kwargsrepr, **self.routed)

    def argsrepr(self, args: tuple[Any, ...]) -> str:
        """Exactly the ``argsrepr`` header Celery's ``as_task_v2`` writes."""
        text = plain_repr(args, self.maxsize)
        return text if text is not None else saferepr(args, self.maxsize, maxlevels=self.maxlevels)

    def result(self, task_id: str) -> AsyncResult:
        # Without a promise of its own until used: ~1 kB less per task of a 100,000-task map.
        (result,) = _compat.item_results(self.task, [task_id])
        if self.ignore_result:
            result.ignored = True
        return result


def _base_shadow_name() -> Any:
    from celery.app.task import Task as CeleryTask

    return CeleryTask.shadow_name


def map_messages(task: Task, shared: dict[str, Any], options: dict[str, Any]) -> MapMessages | None:
    """Hoist the per-map work out of the per-item loop, or None when the task is unusual.

    Anything unusual (custom ``apply_async``, routers, ETAs, expiry, calls from inside a task)
    takes the general path: the task's own ``apply_async`` per item.
    """
    from celery.app.task import Task as CeleryTask

    from celerynb.workers import base, cells

    app = task.app
    if type(task).apply_async not in (CeleryTask.apply_async, base.NotebookTask.apply_async):
        return None
    if not _compat.sends_plain_messages(task) or app.conf.task_routes or app.current_worker_task is not None:
        return None
    if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
        return None  # apply_async raises its own error: let it
    opts = dict(_compat.exec_options(task), **options)
    opts.setdefault("ignore_result", task.ignore_result)
    if any(opts.get(k) is not None for k in ("expires", "eta", "countdown")) or "stamped_headers" in opts:
        return None
    record = getattr(task, "_celerynb_record", None)
    if record is not None:  # a notebook cell: as NotebookTask.apply_async does per call
        cells.ship(app, record)
        opts["headers"] = {**(opts.get("headers") or {}), cells.HEADER: record["version"]}
    return MapMessages(task, shared, options, opts)


def message_sender(fast: MapMessages, producer: Any) -> Any:
    """Celery's message builder and publisher (with its signals) per item, the setup hoisted."""
    publish, name, routed = fast.publish, fast.name, fast.routed

    def send(args: tuple[Any, ...], first: bool) -> AsyncResult:
        task_id = uuid()
        message = fast.message(task_id, args)
        if first:
            publish(producer, name, message, retry=False, **routed)
        else:
            publish(producer, name, message, retry=False, declare=[], **routed)
        return fast.result(task_id)

    return send


def plain_repr(args: tuple[Any, ...], maxsize: int) -> str | None:
    """``repr`` of numbers-only arguments, which is exactly what Celery's ``saferepr`` gives them
    (and ~10x cheaper); None lets Celery compute anything else."""
    for value in args:
        if type(value) not in _PLAIN:
            return None
    text = repr(args)
    return text if len(text) <= maxsize else None


_PLAIN = frozenset({int, float, bool, type(None)})
