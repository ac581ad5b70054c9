"""A Celery consumer that accepts tasks registered after the worker started.

Celery builds every task's strategy once at consumer start and rejects later tasks as
unregistered. Here a missing strategy is built on the first message for that name, from
whatever the app's registry answers: a cell task registered in the kernel, or (in a worker
process) the stand-in that runs a signed, shipped notebook cell. Used by in-kernel workers and,
through ``worker_consumer``, by every ``celery -A celerynb.workers.celery_app worker``.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as _CeleryConsumer

from celerynb.workers import cells


class _AutoStrategies(dict):
    """Strategies built on first use; the task handler keeps a reference to this very dict.

    A cell task's name gets a :class:`_ByVersion` strategy: each of its versions is received
    with its own options. A name neither registered nor a cell is unknown, as in Celery, and
    nothing is kept for it.
    """

    consumer: _CeleryConsumer | None = None

    def __missing__(self, name: str) -> Any:
        consumer = self.consumer
        if consumer is None:
            raise KeyError(name)
        tasks = consumer.app.tasks
        task = tasks.get(name)  # ``get`` never makes a cell stand-in
        if task is None and not isinstance(tasks, cells.CellTaskRegistry):
            raise KeyError(name)  # Celery's "unregistered task" (rejected, stored as a FAILURE)
        if task is None:  # a cell shipped from a kernel, or a typo: kept once a version is received
            return _ByVersion(consumer, name, keep_in=self)
        if getattr(task, "_celerynb_record", None) is not None:
            strategy: Any = _ByVersion(consumer, name)
        else:
            strategy = task.start_strategy(consumer.app, consumer)
            consumer.task_buckets[name] = consumer.bucket_for_task(task)  # defined after the worker started
        self[name] = strategy
        return strategy


class _ByVersion:
    """The strategy of a notebook cell's name: a message goes to the strategy of the version it
    names, built from that version's task, so its ``acks_late``, time limits and rate limit are
    the ones it was sent with (on worker processes too, where only a stand-in is registered)."""

    def __init__(self, consumer: _CeleryConsumer, name: str, keep_in: dict | None = None) -> None:
        self.consumer, self.name, self.keep_in = consumer, name, keep_in
        self.by_version: dict[str | None, Any] = {}
        self._standin: Any = None  # for versions that cannot load: built once, never kept per version

    def __call__(self, message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        headers = getattr(message, "headers", None) or {}
        version = headers.get(cells.HEADER)
        strategy = self.by_version.get(version)
        if strategy is None:
            task = self._task_of(version)
            if task is None:
                return self.consumer.on_unknown_task(body, message, KeyError(self.name))
            consumer = self.consumer
            if getattr(task, "_celerynb_standin", False):  # its version could not load: it fails, saying why
                if self._standin is None:
                    self._standin = task.start_strategy(consumer.app, consumer)
                return self._standin(message, body, *args, **kwargs)
            strategy = task.start_strategy(consumer.app, consumer)
            consumer.task_buckets[self.name] = consumer.bucket_for_task(task)  # the newest version's rate
            self.by_version[version] = strategy
            if self.keep_in is not None:
                self.keep_in.setdefault(self.name, self)
        return strategy(message, body, *args, **kwargs)

    def _task_of(self, version: str | None) -> Any:
        app, name = self.consumer.app, self.name
        registered = app.tasks.get(name)
        if version is None:
            return registered  # a message naming no version (``send_task``): the task as registered
        if registered is not None and getattr(registered, "_celerynb_record", {}).get("version") == version:
            return registered
        task = cells.task_of_version(app, version, name)
        return task if task is not None else app.tasks[name]  # the stand-in: it stores why it cannot run


class MessageRefused(Exception):
    """The worker would not decode this task's message (a serializer it does not accept)."""


class Consumer(_CeleryConsumer):
    Strategies = _AutoStrategies

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategies.consumer = self

    # Celery logs a refused message and drops it: its task would stay PENDING forever, with the
    # reason only in a log file. Record the refusal as the task's FAILURE, where displays look.
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        self._record_refusal(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_invalid_task(body, message, exc)
        self._record_refusal(message, exc)

    def _record_refusal(self, message: Any, exc: Exception) -> None:
        headers = getattr(message, "headers", None)
        task_id = headers.get("id") if isinstance(headers, dict) else None
        if not task_id or not self.app.conf.result_backend:
            return
        accepted = ", ".join(sorted(self.app.conf.accept_content or [])) or "json"
        reason = MessageRefused(
            f"the worker refused this task's message ({exc}); it accepts {accepted}: "
            "send it with serializer='json'"
        )
        try:
            self.app.backend.mark_as_failure(task_id, reason, request=None, call_errbacks=False)
        except Exception:  # noqa: BLE001 - the refusal is logged already; never break the consumer
            pass
