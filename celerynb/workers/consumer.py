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


class Consumer(_CeleryConsumer):
    Strategies = _AutoStrategies

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategies.consumer = self
