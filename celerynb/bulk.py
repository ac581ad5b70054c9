"""``celerynb.map(task, items)``: submit thousands of calls in a few broker round trips.

A loop of ``.delay()`` pays per task for a publish round trip and, with the Redis result
backend, a SUBSCRIBE. Here every call still goes through the task's own ``apply_async`` (same
options, signals, headers such as ``celerynb_cell``, same message bytes: a worker cannot tell
the difference), but inside kombu's producer batch, so a chunk of messages travels in one
pipeline; the per-task SUBSCRIBE is left out and the shared monitor subscribes once per batch
of ids instead. Transports without batch publishing (RabbitMQ) publish message by message
over one shared producer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, Task
from celery.result import AsyncResult, GroupResult
from celery.utils import uuid
from celery.utils.saferepr import saferepr
from kombu.exceptions import EncodeError

from .config import mask_url
from .workers.base import ArgumentNotSerializable

#: Messages per broker round trip when ``chunk`` is not given.
CHUNK = 500


class BulkSubmitError(ConnectionError):
    """The broker failed part-way through :func:`map`; ``submitted`` holds what was sent."""

    def __init__(self, message: str, submitted: GroupResult) -> None:
        super().__init__(message)
        self.submitted = submitted


def map(  # noqa: A001 - the name users know from dask's client.map and the builtin
    task: Task,
    iterable: Iterable[Any],
    *,
    chunk: int | None = None,
    queue: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> GroupResult:
    """Submit ``task`` once per item of ``iterable``; returns a ``GroupResult`` of every call.

    Each item is one call: a **tuple is unpacked as positional arguments** (``(doc_id, opts)``
    calls ``task(doc_id, opts)``); anything else (a number, string, list, dict) is passed as
    the single argument. To pass one tuple as a single argument, wrap it: ``((a, b),)``.

    Args:
        task: a Celery task (``@app.task`` or ``%%celery_task``).
        iterable: the items; consumed once, lazily.
        chunk: messages per broker round trip (default 500).
        queue: queue for every call (default: the task's routing).
        kwargs: keyword arguments shared by every call.

    The result works with ``celerynb.progress``, ``TaskTable``, ``celerynb.gather`` and
    Celery's own ``GroupResult`` methods; its tasks are already registered with the shared
    monitor, so showing progress costs nothing more.

    Raises:
        ArgumentNotSerializable: an item JSON cannot carry (``submitted`` on the exception is
            not set: items before it in the same chunk were not sent; earlier chunks were).
        BulkSubmitError: the broker stopped answering; ``.submitted`` holds the calls sent.
    """
    if not isinstance(task, Task):
        raise TypeError(f"celerynb.map() needs a Celery task (decorated with @app.task), not {type(task).__name__}.")
    if isinstance(iterable, str | bytes | dict):
        raise TypeError(
            f"celerynb.map() needs an iterable of items, not a {type(iterable).__name__}: "
            "wrap it in a list to submit it as one call."
        )
    task = getattr(task, "_get_current_object", lambda: task)()  # @app.task may hand out a lazy proxy
    size = CHUNK if chunk is None else chunk
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk must be a positive number of messages per round trip, not {chunk!r}.")
    app = task.app
    _run_submit_hooks(task)
    shared = dict(kwargs or {})
    options: dict[str, Any] = {"queue": queue} if queue else {}
    results: list[AsyncResult] = []
    if app.conf.task_always_eager:
        results = [task.apply_async(_args_of(item), shared, **options) for item in iterable]
        return _group(app, results)
    _check_broker(app)
    try:
        _publish(task, iterable, shared, options, size, results)
    finally:
        _track(task, results)
    return _group(app, results)


def _args_of(item: Any) -> tuple[Any, ...]:
    return item if isinstance(item, tuple) else (item,)


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


def _group(app: Celery, results: list[AsyncResult]) -> GroupResult:
    group = BulkResult(uuid(), [], app=app)
    group.results = results
    return group


def _run_submit_hooks(task: Task) -> None:
    """celerynb's app starts its embedded cluster on first use: before we pick a transport."""
    from .workers import base

    if isinstance(task, base.NotebookTask):
        for hook in base.submit_hooks:
            hook(task.app)


def _check_broker(app: Celery) -> None:
    """A dead Redis broker is a clear error in a fraction of a second, not retries for seconds."""
    url = app.conf.broker_url or ""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from . import connectivity

        connectivity.check(url)


def _publish(task: Task, iterable: Iterable[Any], shared: dict[str, Any], options: dict[str, Any],
             size: int, results: list[AsyncResult]) -> None:
    """Send every item; ``results`` holds the calls known to be sent if this raises."""
    app = task.app
    with app.producer_or_acquire() as producer, _no_subscribe_per_task(app):
        batched = producer.supports_batch_publish
        send = _fast_sender(task, shared, options, producer) if batched else None
        if send is None:
            send = _apply_async_sender(task, shared, options, producer, batched)
        pending: list[AsyncResult] = []
        with producer.batch(max_size=sys.maxsize) if batched else _nullbatch() as batch:
            for index, item in enumerate(iterable):
                try:
                    pending.append(send(_args_of(item), not (results or pending)))
                except (EncodeError, ArgumentNotSerializable) as exc:
                    raise _describe_encode_error(task, index, _args_of(item), shared, exc) from None
                except TypeError as exc:  # a wrong number of arguments, from Celery's signature check
                    if "argument" in str(exc):
                        raise TypeError(
                            f"celerynb.map: item #{index} ({item!r:.80}) does not fit {task.name}: {exc}"
                        ) from None
                    raise
                if len(pending) >= size:
                    _flush(app, batch, pending, results)
            _flush(app, batch, pending, results)


def _apply_async_sender(task: Task, shared: dict[str, Any], options: dict[str, Any], producer: Any,
                        batched: bool) -> Any:
    """The general path: the task's own ``apply_async`` per item, over one shared producer."""
    # After the first message has declared the queue, later ones skip kombu's per-message
    # re-declaration (an entity copy each), unless a router may pick a queue per item.
    skip_declare = not task.app.conf.task_routes
    extra: dict[str, Any] = {"retry": False} if batched else {}  # nothing leaves before the flush

    def send(args: tuple[Any, ...], first: bool) -> AsyncResult:
        more = {"declare": []} if skip_declare and not first else {}
        return task.apply_async(args, shared, producer=producer, **options, **extra, **more)

    return send


def _fast_sender(task: Task, shared: dict[str, Any], options: dict[str, Any], producer: Any) -> Any:
    """What ``apply_async`` -> ``send_task`` compute per call, computed once per map.

    Celery's message builder (``amqp.create_task_message``) and publisher
    (``amqp.send_task_message``, with its signals) still run per item, so the message is
    Celery's own; only the option merging, routing and configuration reads that are the same
    for every item are hoisted. Anything unusual (custom ``apply_async``, routers, ETAs,
    expiry, calls from inside a task) takes the general path instead. ``None``: not eligible.
    """
    from celery.app.task import Task as CeleryTask

    from .workers import base, cells

    app = task.app
    if type(task).apply_async not in (CeleryTask.apply_async, base.NotebookTask.apply_async):
        return None
    if task.__v2_compat__ or app.conf.task_routes or app.current_worker_task is not None:
        return None
    if getattr(task, "_dump_pydantic_arguments", None) is not None:
        return None
    if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
        return None  # apply_async raises its own error: let it
    opts = dict(task._get_exec_options(), **options)
    opts.setdefault("ignore_result", task.ignore_result)
    if any(opts.get(k) is not None for k in ("expires", "eta", "countdown")) or "stamped_headers" in opts:
        return None
    record = getattr(task, "_celerynb_record", None)
    if record is not None:  # a notebook cell: as NotebookTask.apply_async does per call
        cells.ship(app, record)
        opts["headers"] = {**(opts.get("headers") or {}), cells.HEADER: record["version"]}
    time_limit = opts.pop("time_limit", None)
    soft_time_limit = opts.pop("soft_time_limit", None)
    opts.pop("expires", None)
    ignore_result = opts.pop("ignore_result", None)
    amqp = app.amqp
    routed = amqp.router.route(opts, task.name, (), shared, task)
    reply_to = app.thread_oid
    sent_event = app.conf.task_send_sent_event
    check = getattr(task, "__header__", None) if task.typing else None
    name = task.name
    result_cls = task.AsyncResult
    create, publish = amqp.create_task_message, amqp.send_task_message
    maxsize = amqp.argsrepr_maxsize
    kwargsrepr = saferepr(shared, amqp.kwargsrepr_maxsize, maxlevels=app.conf.task_repr_maxlevels)

    def send(args: tuple[Any, ...], first: bool) -> AsyncResult:
        if check is not None:
            check(*args, **shared)
        task_id = uuid()
        shadow = task.shadow_name(args, shared, options)
        message = create(task_id, name, args, shared, None, None, None, None, None, 0, None, None, None,
                         reply_to, time_limit, soft_time_limit, sent_event, None, None, shadow, None,
                         ignore_result=ignore_result, replaced_task_nesting=0,
                         argsrepr=_plain_repr(args, maxsize), kwargsrepr=kwargsrepr, **routed)
        if first:
            publish(producer, name, message, retry=False, **routed)
        else:
            publish(producer, name, message, retry=False, declare=[], **routed)
        result = result_cls(task_id)
        result.ignored = ignore_result
        return result

    return send


def _plain_repr(args: tuple[Any, ...], maxsize: int) -> str | None:
    """``repr`` of numbers-only arguments, which is exactly what Celery's ``saferepr`` gives them
    (and ~10x cheaper); None lets Celery compute anything else."""
    for value in args:
        if type(value) not in _PLAIN:
            return None
    text = repr(args)
    return text if len(text) <= maxsize else None


_PLAIN = frozenset({int, float, bool, type(None)})


def _flush(app: Celery, batch: Any, pending: list[AsyncResult], results: list[AsyncResult]) -> None:
    if not pending:
        return
    try:
        if batch is not None:
            batch.flush()
    except Exception as exc:  # noqa: BLE001 - kombu wraps the connection error; ours says what to do
        lost = len(pending)
        pending.clear()
        raise BulkSubmitError(
            f"celerynb.map: the broker at {mask_url(app.conf.broker_url)} failed after {len(results)} "
            f"task(s) were sent ({type(exc).__name__}); the next {lost} may or may not have been "
            "delivered. Check the broker, then resubmit what is missing (exc.submitted has what was sent).",
            _group(app, list(results)),
        ) from None
    results.extend(pending)
    pending.clear()


@contextmanager
def _nullbatch() -> Iterator[None]:
    yield None


@contextmanager
def _no_subscribe_per_task(app: Celery) -> Iterator[None]:
    """Skip the Redis backend's SUBSCRIBE per published task (one round trip each).

    The monitor subscribes to the whole batch at once, and ``AsyncResult.get()`` subscribes
    by itself when it waits, so nothing is missed. The backend is thread-local: other threads
    are unaffected.
    """
    backend = app.backend
    if not hasattr(backend, "result_consumer") or "on_task_call" in vars(backend):
        yield
        return
    backend.on_task_call = _ignore
    try:
        yield
    finally:
        del backend.on_task_call


def _ignore(*_: Any, **__: Any) -> None:
    return None


def _track(task: Task, results: list[AsyncResult]) -> None:
    if not results or task.ignore_result or not task.app.conf.result_backend:
        return
    from .monitor import get_monitor

    get_monitor(task.app).track(r.id for r in results)


def _describe_encode_error(task: Task, index: int, args: tuple[Any, ...], shared: dict[str, Any],
                           exc: Exception) -> Exception:
    from .workers.base import describe_encode_error

    if not isinstance(exc, ArgumentNotSerializable):  # NotebookTask names the argument itself
        exc = describe_encode_error(task, args, shared, exc)
    return ArgumentNotSerializable(f"celerynb.map: item #{index}: {exc}")
