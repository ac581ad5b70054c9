"""``celerynb.map(task, items)``: submit thousands of calls in a few broker round trips.

A loop of ``.delay()`` pays per task for a publish round trip and, with the Redis result
backend, a SUBSCRIBE. Here every call still goes through the task's own ``apply_async`` (same
options, signals, headers such as ``celerynb_cell``, same message bytes: a worker cannot tell
the difference), but inside kombu's producer batch, so a chunk of messages travels in one
pipeline; the per-task SUBSCRIBE is left out and the shared monitor subscribes once per batch
of ids instead. Transports without batch publishing (RabbitMQ) publish message by message
over one shared producer. With ``batch`` > 1 (or ``"auto"`` for quick calls) many items travel
in one message of celerynb's batch task instead (:mod:`celerynb.bulk.batched`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from contextlib import nullcontext
from typing import Any

from celery import Celery, Task
from celery.result import AsyncResult, GroupResult

from celerynb import _compat
from celerynb.bulk import batched
from celerynb.bulk.calls import args_of, flush_sent, group_of, naming_errors
from celerynb.bulk.messages import map_messages, message_sender
from celerynb.bulk.redis_copies import publish_as_copies

#: Messages per broker round trip when ``chunk`` is not given.
CHUNK = 500


def map(  # noqa: A001 - the name users know from dask's client.map and the builtin
    task: Task,
    iterable: Iterable[Any],
    *,
    batch: int | str = "auto",
    chunk: int | None = None,
    queue: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> GroupResult:
    """Submit ``task`` once per item of ``iterable``; returns a ``GroupResult`` of every call.

    Each item is one call: a **tuple is unpacked as positional arguments** (``(doc_id, opts)``
    calls ``task(doc_id, opts)``); anything else (a number, string, list, dict) is passed as
    the single argument. To pass one tuple as a single argument, wrap it: ``((a, b),)``.

    Every item has its own task id and ``AsyncResult``, batched or not: ``celerynb.progress``,
    ``TaskTable``, ``celerynb.gather`` and Celery's own ``GroupResult`` methods count items; the
    tasks are already registered with the shared monitor, so showing progress costs nothing more.

    **Batches.** With ``batch`` > 1, one message of celerynb's ``celerynb.batch`` task carries
    many items; the worker runs them one after the other, each with its own request context
    (``self.request.id``, ``update_state``, ``celerynb.track`` are the item's) and stores each
    item's result or exception under its own id. A failing item does not stop the others; a
    cancel (the displays' Cancel button) stores the batch's remaining items REVOKED unrun; an
    acks-late task's batch redelivered after its worker died skips the items already done.
    Inside a batch an item is shown STARTED only once it has run 50 ms (celerynb's rule for every
    task; Celery's ``track_started=True`` is not honoured per item), and per-item publish
    signals, rate limits and time limits do not apply (the batch message has the app's limits).
    Each item sends ``task_prerun``, ``task_postrun`` and ``task_success`` to the receivers that
    were connected when its batch started, and ``task_failure`` as Celery does.

    ``batch="auto"`` (the default) batches only quick calls. Below 32 items it sends one message
    per item. Otherwise it sends the first 4 items as one batch, whose worker reports the
    seconds it spent per item; if that report is not back within 0.2 s the calls are long and
    the rest go one per message. Else a batch gets ``0.035 s / seconds per item`` items (~35 ms
    of work), at most 1000 and at most ``len(items) / 16``, so the work still spreads over the
    workers (a generator's length is read up to 16,000 items ahead). ``auto`` also sends one
    message per item for apps other than celerynb's (their workers may not have the batch
    task), tasks with a rate limit, a backend other than Redis, foreign publish-signal
    receivers, or a call from inside a task.

    Args:
        task: a Celery task (``@app.task`` or ``%%celery_task``).
        iterable: the items; consumed once, lazily.
        batch: ``"auto"``, or items per message: ``1`` is one message per item (as ``.delay()``),
            ``N`` forces batches of N. Your own app needs the batch task on its workers for N > 1:
            import/register it in your worker's app to enable batching
            (``celerynb.workers.batch.register(app)``). Eager apps always run items in place.
        chunk: items per broker round trip (default 500).
        queue: queue for every call (default: the task's routing).
        kwargs: keyword arguments shared by every call.

    Raises:
        ArgumentNotSerializable: an item JSON cannot carry (``submitted`` on the exception is
            not set: items before it in the same chunk were not sent; earlier chunks were).
        BulkSubmitError: the broker stopped answering; ``.submitted`` holds the calls sent.
        ValueError: a bad ``batch`` or ``chunk``; ``batch`` > 1 for an app without the batch task.
    """
    if not isinstance(task, Task):
        raise TypeError(f"celerynb.map() needs a Celery task (decorated with @app.task), not {type(task).__name__}.")
    if isinstance(iterable, str | bytes | dict):
        raise TypeError(
            f"celerynb.map() needs an iterable of items, not a {type(iterable).__name__}: "
            "wrap it in a list to submit it as one call."
        )
    task = _compat.unproxied(task)
    batched.check_batch(batch)
    size = CHUNK if chunk is None else chunk
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk must be a positive number of items per round trip, not {chunk!r}.")
    app = task.app
    _run_submit_hooks(task)
    shared = dict(kwargs or {})
    options: dict[str, Any] = {"queue": queue} if queue else {}
    results: list[AsyncResult] = []
    if app.conf.task_always_eager:
        results = [task.apply_async(args_of(item), shared, **options) for item in iterable]
        return group_of(app, results)
    _check_broker(app)
    items: Iterator[tuple[int, Any]] = enumerate(iterable)
    try:
        if batched.batching(task, batch, options):
            length = len(iterable) if isinstance(iterable, Sized) else None
            batched.publish(task, items, shared, options, size, batch, length, results,
                            lambda rest: _publish(task, rest, shared, options, size, results))
        else:
            _publish(task, items, shared, options, size, results)
    finally:
        _track(task, results)
    return group_of(app, results)


def _run_submit_hooks(task: Task) -> None:
    """celerynb's app starts its embedded cluster on first use: before we pick a transport."""
    from celerynb.workers import base

    if isinstance(task, base.NotebookTask):
        for hook in base.submit_hooks:
            hook(task.app)


def _check_broker(app: Celery) -> None:
    """A dead Redis broker is a clear error in a fraction of a second, not retries for seconds."""
    url = app.conf.broker_url or ""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from celerynb.config import reachability

        reachability.check(url)


def _publish(task: Task, items: Iterator[tuple[int, Any]], shared: dict[str, Any], options: dict[str, Any],
             size: int, results: list[AsyncResult]) -> None:
    """Send every item, one message each; ``results`` holds the calls known to be sent if this raises."""
    app = task.app
    with app.producer_or_acquire() as producer, _compat.no_result_subscribe_per_task(app):
        batched = _compat.supports_batch_publish(producer)
        fast = map_messages(task, shared, options) if batched else None
        if fast is not None:
            rest = publish_as_copies(task, fast, items, producer, size, results)
            if rest is None:
                return
            items = rest
        send = message_sender(fast, producer) if fast is not None else None
        if send is None:
            send = apply_async_sender(task, shared, options, producer, batched)
        pending: list[AsyncResult] = []
        with producer.batch(max_size=sys.maxsize) if batched else nullcontext() as batch:
            for index, item in items:
                with naming_errors(task, index, item, shared):
                    pending.append(send(args_of(item), not (results or pending)))
                if len(pending) >= size:
                    flush_sent(app, batch, pending, results)
            flush_sent(app, batch, pending, results)


def apply_async_sender(task: Task, shared: dict[str, Any], options: dict[str, Any], producer: Any,
                        batched: bool) -> Any:
    """The general path: the task's own ``apply_async`` per item, over one shared producer."""
    # After the first message has declared the queue, later ones skip kombu's per-message
    # re-declaration (an entity copy each), unless a router may pick a queue per item.
    skip_declare = not task.app.conf.task_routes
    extra: dict[str, Any] = {"retry": False} if batched else {}  # nothing leaves before the flush

    def send(args: tuple[Any, ...], first: bool) -> AsyncResult:
        more: dict[str, Any] = {"declare": []} if skip_declare and not first else {}
        return task.apply_async(args, shared, producer=producer, **options, **extra, **more)

    return send


def _track(task: Task, results: list[AsyncResult]) -> None:
    if not results or task.ignore_result or not task.app.conf.result_backend:
        return
    from celerynb.tracking.monitor import get_monitor

    get_monitor(task.app).track(r.id for r in results)
