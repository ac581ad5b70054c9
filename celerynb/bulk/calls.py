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
    """A ``GroupResult`` that subscribes per task only if Celery's own waiting API is used.

    Celery's ``GroupResult(id, results)`` SUBSCRIBEs to every task at construction (one round
    trip each, as slow as the ``.delay()`` loop); the shared monitor already follows these
    tasks, so ``progress``/``TaskTable``/``gather`` never need that. ``get()``, ``join_native``
    and ``then`` register the tasks with Celery's backend on first use, as the constructor would.
    """

    _registered = False

    def _register(self) -> None:
        if not self._registered:
            self._registered = True
            for result in self.results:
                self._on_full.add(result)

    def join_native(self, *args: Any, **kwargs: Any) -> Any:
        self._register()
        return super().join_native(*args, **kwargs)

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
