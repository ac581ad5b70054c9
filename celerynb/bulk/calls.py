"""One call per item of ``celerynb.map``: how an item becomes arguments, and errors that name
the item (or say what was sent before the broker failed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, Task
from celery.result import AsyncResult, GroupResult
from celery.utils import uuid
from kombu.exceptions import EncodeError

from celerynb.config import mask_url
from celerynb.workers.base import ArgumentNotSerializable


class BulkSubmitError(ConnectionError):
    """The broker failed part-way through :func:`map`; ``submitted`` holds what was sent."""

    def __init__(self, message: str, submitted: GroupResult) -> None:
        super().__init__(message)
        self.submitted = submitted


class BulkResult(GroupResult):
    """A ``GroupResult`` whose waiting goes through the shared monitor.

    Celery's ``GroupResult(id, results)`` SUBSCRIBEs to every task at construction (one round
    trip each, as slow as the ``.delay()`` loop), and its ``join`` polls task by task; the shared
    monitor already follows these tasks, so ``get()``/``join()``/``join_native()`` wait on it
    (pushed states, one thread), with Celery's contract: values in order, the first failure
    raised. ``iter_native`` and ``then`` register the tasks with Celery's backend on first use,
    as the constructor would.
    """

    _registered = False

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            callback: Any = None, no_ack: bool = True, on_message: Any = None,
            disable_sync_subtasks: bool = True, on_interval: Any = None) -> list[Any]:
        return self.join(timeout=timeout, propagate=propagate, interval=interval, callback=callback,
                         no_ack=no_ack, on_message=on_message, disable_sync_subtasks=disable_sync_subtasks,
                         on_interval=on_interval)

    def join(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
             callback: Any = None, no_ack: bool = True, on_message: Any = None,
             disable_sync_subtasks: bool = True, on_interval: Any = None, **kwargs: Any) -> list[Any]:
        if not self._monitor_can_wait() or on_message is not None or on_interval is not None:
            self._register()
            return super().join(timeout=timeout, propagate=propagate, interval=interval, callback=callback,
                                no_ack=no_ack, on_message=on_message, disable_sync_subtasks=disable_sync_subtasks,
                                on_interval=on_interval, **kwargs)
        if disable_sync_subtasks:
            from celery.result import assert_will_not_block

            assert_will_not_block()
        from celerynb.tracking.awaiting import join

        return join([r.id for r in self.results], self.app, timeout, propagate, callback)

    join_native = join

    def _monitor_can_wait(self) -> bool:
        from celery.result import EagerResult

        from celerynb.tracking.backend_source import BackendNotObservable, check_observable

        if not self.results or self.app.conf.task_always_eager or any(isinstance(r, EagerResult) for r in self.results):
            return False
        try:
            check_observable(self.app)
        except BackendNotObservable:
            return False  # e.g. rpc://: only Celery's own join can read it
        return True

    def _register(self) -> None:
        if not self._registered:
            self._registered = True
            for result in self.results:
                self._on_full.add(result)

    def iter_native(self, *args: Any, **kwargs: Any) -> Any:
        self._register()
        return super().iter_native(*args, **kwargs)

    def then(self, *args: Any, **kwargs: Any) -> Any:
        self._register()
        return super().then(*args, **kwargs)


def args_of(item: Any) -> tuple[Any, ...]:
    return item if isinstance(item, tuple) else (item,)


def group_of(app: Celery, results: list[AsyncResult]) -> GroupResult:
    group = BulkResult(uuid(), [], app=app)
    group.results = results
    return group


@contextmanager
def naming_errors(task: Task, index: int, item: Any, shared: dict[str, Any]) -> Iterator[None]:
    """An item that cannot be sent is named by its position, with what is wrong."""
    try:
        yield
    except (EncodeError, ArgumentNotSerializable) as exc:
        raise describe_item_error(task, index, args_of(item), shared, exc) from None
    except TypeError as exc:  # a wrong number of arguments, from Celery's signature check
        if "argument" in str(exc):
            raise TypeError(f"celerynb.map: item #{index} ({item!r:.80}) does not fit {task.name}: {exc}") from None
        raise


def flush_sent(app: Celery, batch: Any, pending: list[AsyncResult], results: list[AsyncResult]) -> None:
    """Send a producer batch (``None``: already sent) and move its results to ``results``; a broker
    failure becomes :class:`BulkSubmitError` with what was sent before."""
    if not pending:
        return
    try:
        if batch is not None:
            batch.flush()
    except Exception as exc:  # noqa: BLE001 - kombu wraps the connection error; ours says what to do
        raise_lost(app, exc, len(pending), results)
    results.extend(pending)
    pending.clear()


def raise_lost(app: Celery, exc: Exception, lost: int, results: list[AsyncResult]) -> None:
    raise BulkSubmitError(
        f"celerynb.map: the broker at {mask_url(app.conf.broker_url)} failed after {len(results)} "
        f"task(s) were sent ({type(exc).__name__}); the next {lost} may or may not have been "
        "delivered. Check the broker, then resubmit what is missing (exc.submitted has what was sent).",
        group_of(app, list(results)),
    ) from None


def describe_item_error(task: Task, index: int, args: tuple[Any, ...], shared: dict[str, Any],
                           exc: Exception) -> Exception:
    from celerynb.workers.base import describe_encode_error

    if not isinstance(exc, ArgumentNotSerializable):  # NotebookTask names the argument itself
        exc = describe_encode_error(task, args, shared, exc)
    return ArgumentNotSerializable(f"celerynb.map: item #{index}: {exc}")
