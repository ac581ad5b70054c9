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


class _AutoStrategies(dict):
    """Strategies built on first use; the task handler keeps a reference to this very dict."""

    consumer: _CeleryConsumer | None = None

    def __missing__(self, name: str) -> Any:
        consumer = self.consumer
        if consumer is None:
            raise KeyError(name)
        task = consumer.app.tasks[name]  # KeyError (NotRegistered) for an unknown, non-cell task
        strategy = task.start_strategy(consumer.app, consumer)
        self[name] = strategy
        return strategy


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
