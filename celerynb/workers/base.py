"""The task class of celerynb's app: submit hooks and clear serialization errors.

``submit_hooks`` lets the kernel side (``celerynb.cluster``) start the embedded cluster on
the first submission without this package importing it: workers stay free of IPython.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.states import READY_STATES
from kombu.exceptions import EncodeError
from kombu.utils.uuid import uuid

from celerynb.workers import capture, cells, local_results, started, stopping

#: Called with the app before every ``apply_async`` (cheap checks only: this is a hot path).
submit_hooks: list[Callable[[Celery], None]] = []

_thread_node = threading.local()


def run_tasks_as(node_name: str) -> None:
    """Tasks run by this thread report ``node_name`` as their worker.

    Celery's threads and solo pools name the machine (``gethostname()``) in ``request.hostname``
    and the stored ``worker`` field, not the worker's node name: two in-kernel workers would
    look alike. celerynb's in-kernel pools call this in each of their threads.
    """
    _thread_node.name = node_name


def node_name() -> str | None:
    """The node name set by :func:`run_tasks_as` for this thread (None: Celery's own hostname)."""
    return getattr(_thread_node, "name", None)


def slot() -> str:
    """Where a task runs inside its worker: ``pid/thread name`` (a prefork child, a pool thread).

    Stored with each task's timing (:func:`celerynb.workers.result_store.add_timing`), so a
    timeline draws one lane per slot. Computed once per thread (and again in a forked child).
    """
    pid = os.getpid()
    cached = getattr(_thread_node, "slot", None)
    if cached is None or cached[0] != pid:
        cached = _thread_node.slot = (pid, f"{pid}/{threading.current_thread().name}")
    return cached[1]


class ArgumentNotSerializable(TypeError):
    """A task argument that the message serializer (JSON) cannot carry."""


class NotebookTask(Task):
    """``celery.Task`` plus on-demand startup, errors that name the bad argument, STARTED
    written only for tasks that run long enough to be seen running (:mod:`.started`), and each
    run's own output captured next to its result (:mod:`.capture`; read it with ``celerynb.logs``)."""

    #: Celery's immediate STARTED write is replaced by :mod:`celerynb.workers.started`, which
    #: follows ``task_track_started``; ``@app.task(track_started=True)`` restores Celery's own.
    track_started = False
    #: A cancel stops the task on threads and solo pools too (:mod:`celerynb.workers.stopping`).
    Request = "celerynb.workers.requests:StoppableRequest"
    #: Each run's stdout, stderr and records go to its own stored logs (:mod:`.capture`), for
    #: this app's cell tasks and shipped cells too.
    captures_output = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        node = getattr(_thread_node, "name", None)
        if node and not request.called_directly:
            request.hostname = node
        # Read by :mod:`.result_store`: the stored states carry when and where (pid/thread) the
        # task started, and its runtime.
        request.celerynb_started = (time.time(), time.perf_counter(), slot())
        # Its stdout, stderr and logging records go to its own stored logs (:mod:`.capture`).
        with started.started_later(self), capture.capturing(self, request):
            try:
                return super().__call__(*args, **kwargs)
            finally:
                stopping.leave_body()  # nothing is raised into the bookkeeping that follows

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None,
                     **kwargs: Any) -> None:
        if task_id is None or task_id == self.request.id:
            started.reporter.cancel(self.request.id)  # the task's own report replaces STARTED
            if state in READY_STATES:
                capture.flush_running()  # its logs stored before it looks ended
        super().update_state(task_id, state, meta, **kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        for hook in submit_hooks:
            hook(self.app)
        record = getattr(self, "_celerynb_record", None)
        if record is not None and not self.app.conf.task_always_eager:
            # A notebook cell: worker processes fetch this exact version by the header (stored
            # once per result backend, and again before it expires).
            cells.ship(self.app, record)
            options["headers"] = {**(options.get("headers") or {}), cells.HEADER: record["version"]}
        if (local_results.serving(self.app) and not rest and not self.app.conf.task_always_eager
                and not options.get("ignore_result", self.ignore_result)):
            options["task_id"] = task_id = options.get("task_id") or uuid()
            local_results.expect(task_id)  # run and stored by this process: no subscription, no read
        try:
            return super().apply_async(args, kwargs, *rest, **options)
        except EncodeError as exc:
            local_results.forget(options.get("task_id") or "")
            raise describe_encode_error(self, args, kwargs, exc) from None

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:  # noqa: N802 - Celery's name
        if local_results.expected(task_id):
            return local_results.ServedResult(task_id, backend=self.backend, task_name=self.name,
                                              app=self.app, **kwargs)
        return super().AsyncResult(task_id, **kwargs)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Say in the STARTED state that this run is a redelivery (a worker died with the task).

        Celery writes STARTED with the pid and hostname only; a display that did not see the
        first run could not tell. Costs a write only for redelivered messages.
        """
        request = self.request
        if (request.delivery_info or {}).get("redelivered") and started.reports_started(self):
            self.backend.store_result(task_id, {"pid": os.getpid(), "hostname": request.hostname, "redelivered": True},
                                      "STARTED", request=request)


def describe_encode_error(task: Task, args: Any, kwargs: Any, exc: Exception) -> Exception:
    """Find which argument the serializer refused and say so in one sentence."""
    from kombu.utils.json import dumps

    try:
        params = list(inspect.signature(task.run).parameters)
    except (TypeError, ValueError):
        params = []
    if getattr(task, "__self__", None) is not None or (params and params[0] == "self" and task.bind):
        params = params[1:]
    candidates = [(params[i] if i < len(params) else f"#{i}", value) for i, value in enumerate(args or ())]
    candidates += list((kwargs or {}).items())
    for name, value in candidates:
        try:
            dumps(value)
        except Exception as err:  # noqa: BLE001 - the serializer's own words go in the message
            return ArgumentNotSerializable(
                f"{task.name}: argument {name!r} ({type(value).__name__}) cannot be sent as "
                f"{task.serializer.upper()}: {err}. Pass plain data (str, int, float, bool, list, dict) instead."
            )
    return ArgumentNotSerializable(f"{task.name}: the message cannot be serialized: {exc}")
