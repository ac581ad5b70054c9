"""Batched map: many items per message of the batch task (:mod:`celerynb.workers.batch`).

Each item still gets its own task id and ``AsyncResult``; a batch message carries
``[task name, [[item_id, args], ...], shared kwargs]``. ``batch="auto"`` measures the task first
(see :func:`auto_size`) and sizes batches so one runs for ~``TARGET`` seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from itertools import chain, islice
from typing import Any
from uuid import UUID

from celery import Celery, Task, states
from celery.result import AsyncResult
from celery.utils import uuid
from celery.utils.saferepr import saferepr
from kombu.exceptions import EncodeError

from celerynb import _compat
from celerynb.bulk.calls import args_of, flush_sent, naming_errors, raise_lost
from celerynb.bulk.messages import plain_repr
from celerynb.workers import batch as batch_task
from celerynb.workers.base import ArgumentNotSerializable

#: ``batch="auto"``: seconds one batch should run, the most items per batch, and the spread
#: (a known length gives at most ``len / SPREAD`` items per batch, so every worker gets some).
TARGET = 0.035
MAX_BATCH = 1000
SPREAD = 16
#: Items of the first (measuring) batch, and how long ``map`` waits for its report.
PROBE = 4
PROBE_WAIT = 0.2

Items = Iterator[tuple[int, Any]]


def check_batch(batch: Any) -> None:
    if batch == "auto":
        return
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be 'auto' or a whole number of items per message (1 = one message per item), "
                         f"not {batch!r}.")


def batching(task: Task, batch: Any, options: dict[str, Any]) -> bool:
    """Whether this map sends batch messages (``batch=1`` and unsuitable cases: one message per item)."""
    from celerynb.bulk.redis_copies import _own_receivers
    from celerynb.workers.celery_app import app as nb_app

    if batch == 1:
        return False
    app = task.app
    opts = dict(_compat.exec_options(task), **options)
    if any(opts.get(k) is not None for k in ("expires", "eta", "countdown")) or not _compat.sends_plain_messages(task):
        return False  # per-message options a batch cannot carry: today's path
    if batch == "auto":
        from celery import signals

        return (app is nb_app and app.current_worker_task is None and not task.rate_limit
                and _redis_client(app) is not None
                and _own_receivers(signals.before_task_publish, task.name) is not None
                and _own_receivers(signals.after_task_publish, task.name) is not None)
    if not batch_task.has_batch_task(app):
        raise ValueError(
            f"celerynb.map(batch={batch}): app {app.main!r} has no batch task; call "
            "celerynb.workers.batch.register(app) where the app is defined (import/register it in your "
            "worker's app to enable batching), or pass batch=1."
        )
    return True


def _redis_client(app: Celery) -> Any:
    return getattr(app.backend, "client", None)


class BatchSender:
    """Builds and publishes batch messages for one map (routing and headers computed once)."""

    def __init__(self, task: Task, shared: dict[str, Any], options: dict[str, Any], producer: Any) -> None:
        from celery import signals

        from celerynb.bulk.redis_copies import _own_receivers, _submit_log
        from celerynb.workers import cells

        app = self.app = task.app
        self.task, self.shared, self.producer = task, shared, producer
        self.name = batch_task.NAME_ACKS_LATE if task.acks_late else batch_task.NAME
        opts = dict(_compat.exec_options(task), **options)
        routed = app.amqp.router.route(opts, task.name, (), shared, task)
        queue = routed.get("queue")
        exchange, key = routed.get("exchange"), routed.get("routing_key")
        kind = getattr(getattr(queue, "exchange", None), "type", "direct")
        if (not exchange or not key) and kind == "direct":
            exchange, key = "", queue.name
        elif exchange is None:
            exchange = queue.exchange.name or app.amqp.default_exchange
            key = key or queue.routing_key or app.conf.task_default_routing_key
        self.exchange, self.routing_key, self.declare = exchange, key, [queue]
        self.delivery_mode = getattr(queue.exchange, "delivery_mode", None) or app.conf.task_default_delivery_mode
        self.priority = routed.get("priority")
        self.headers: dict[str, Any] = {}
        record = getattr(task, "_celerynb_record", None)
        if record is not None:  # a notebook cell: the batch names the version its items run
            cells.ship(app, record)
            self.headers[cells.HEADER] = record["version"]
        self.check = getattr(task, "__header__", None) if task.typing else None
        self.ignored = opts.get("ignore_result", task.ignore_result)
        self.record = _submit_log() if _own_receivers(signals.after_task_publish, task.name) else None
        self.maxsize, self.maxlevels = app.amqp.argsrepr_maxsize, app.conf.task_repr_maxlevels
        self.kwargsrepr = saferepr(shared, app.amqp.kwargsrepr_maxsize, maxlevels=self.maxlevels)
        self.cancels = batch_task.cancel_count(app)  # a batch reads the cancel markers only if it moves
        self.declared = False

    def monitor(self) -> Any:
        """The monitor that will follow these items (None: their results are not kept)."""
        from celerynb.tracking.monitor import BackendNotObservable, check_observable, get_monitor

        if self.ignored or not self.app.conf.result_backend:
            return None
        try:
            check_observable(self.app)
        except BackendNotObservable:  # said once the map is sent, as for any map
            return None
        return get_monitor(self.app)

    def pairs(self, chunk: list[tuple[int, Any]]) -> list[list[Any]]:
        """``[[item_id, args], ...]`` of a batch; an item that does not fit the task is named here."""
        check, shared, out = self.check, self.shared, []
        ids = uuids(len(chunk))
        for (index, item), item_id in zip(chunk, ids, strict=True):
            args = args_of(item)
            if check is not None:
                with naming_errors(self.task, index, item, shared):
                    check(*args, **shared)
            out.append([item_id, args])
        return out

    def publish(self, chunk: list[tuple[int, Any]], pairs: list[list[Any]], probe: bool = False) -> str:
        """One batch message (queued in the producer's batch where the transport has one)."""
        app = self.app
        batch_id = uuid()
        message = app.amqp.create_task_message(
            batch_id, self.name, (self.task.name, pairs, self.shared, self.cancels), {}, reply_to=app.thread_oid,
            argsrepr=f"({self.task.name!r}, <{len(pairs)} items>)", kwargsrepr="{}",
            ignore_result=not probe)
        headers, properties, body, _ = message
        headers.update(self.headers)
        if self.priority is not None:
            properties["priority"] = self.priority
        try:
            self.producer.publish(body, exchange=self.exchange, routing_key=self.routing_key,
                                  serializer=app.conf.task_serializer, compression=app.conf.task_compression,
                                  retry=False, delivery_mode=self.delivery_mode,
                                  declare=[] if self.declared else self.declare, headers=headers, **properties)
        except EncodeError as exc:
            self._name_bad_item(chunk, exc)
            raise
        self.declared = True
        return batch_id

    def _name_bad_item(self, chunk: list[tuple[int, Any]], exc: Exception) -> None:
        from kombu.utils.json import dumps

        for index, item in chunk:
            with naming_errors(self.task, index, item, self.shared):
                try:
                    dumps(args_of(item))
                except Exception as err:  # noqa: BLE001 - the serializer's reason goes in the message
                    raise EncodeError(err) from err
        with naming_errors(self.task, chunk[0][0], chunk[0][1], self.shared):
            raise EncodeError(exc)  # the shared kwargs, then

    def results(self, pairs: list[list[Any]]) -> list[AsyncResult]:
        ignored = self.ignored
        record, name, kwargsrepr = self.record, self.task.name, self.kwargsrepr
        out = _compat.item_results(self.task, [item_id for item_id, _ in pairs])
        for result, (item_id, args) in zip(out, pairs, strict=True):
            if ignored:
                result.ignored = True
            if record is not None:
                text = plain_repr(args, self.maxsize)
                if text is None:
                    text = saferepr(args, self.maxsize, maxlevels=self.maxlevels)
                record(item_id, name, text, kwargsrepr)
        return out


def uuids(n: int) -> list[str]:
    """``n`` task ids as ``celery.utils.uuid`` makes them (``uuid4``), from one ``os.urandom`` call.

    ``uuid4`` reads ``os.urandom(16)`` per id, a system call that lets go of the GIL: with the
    kernel's own worker threads busy, each id then waits for the GIL (~70 us measured, most of
    the submit time of a batched map). ``UUID(bytes=..., version=4)`` is how ``uuid4`` builds it.
    """
    raw = os.urandom(16 * n)
    return [str(UUID(bytes=raw[i:i + 16], version=4)) for i in range(0, 16 * n, 16)]


def publish(task: Task, items: Items, shared: dict[str, Any], options: dict[str, Any], chunk: int, batch: Any,
            length: int | None, results: list[AsyncResult], per_item: Callable[[Items], None]) -> None:
    """Send every item in batch messages; ``per_item`` sends what ``auto`` decides not to batch."""
    app = task.app
    with app.producer_or_acquire() as producer, _compat.no_result_subscribe_per_task(app):
        sender = BatchSender(task, shared, options, producer)
        if batch == "auto":
            head = list(islice(items, SPREAD * MAX_BATCH))
            if len(head) < SPREAD * MAX_BATCH:
                length = len(head)
            items = chain(head, items)
            if length is not None and length < 2 * SPREAD:
                per_item(items)
                return
            size = auto_size(sender, items, length, results)
            if size <= 1:
                per_item(items)
                return
        else:
            size = batch
        _send_batches(sender, items, size, chunk, results)


def auto_size(sender: BatchSender, items: Items, length: int | None, results: list[AsyncResult]) -> int:
    """Items per batch for ``batch="auto"``, from the first ``PROBE`` items sent as one batch.

    The worker reports the seconds per item it measured; if that report is not back within
    ``PROBE_WAIT`` seconds the items are long and are sent one per message. Otherwise a batch
    gets ``TARGET / seconds_per_item`` items (~35 ms of work), at most ``MAX_BATCH`` and, when the
    length is known, at most ``length / SPREAD``, so that the work still spreads over the workers.
    """
    probe = list(islice(items, PROBE))
    if not probe:
        return 1
    pairs = sender.pairs(probe)
    try:
        batch_id = sender.publish(probe, pairs, probe=True)
    except (EncodeError, ArgumentNotSerializable):
        raise
    except Exception as exc:  # noqa: BLE001 - kombu wraps the connection error; ours says what to do
        raise_lost(sender.app, exc, len(pairs), results)
    results.extend(sender.results(pairs))
    per_item = _wait_report(sender.app, batch_id, PROBE_WAIT)
    if per_item is None:
        return 1
    cap = MAX_BATCH if length is None else min(MAX_BATCH, length // SPREAD)
    return max(1, min(cap, int(TARGET / max(per_item, 1e-6))))


def _wait_report(app: Celery, batch_id: str, timeout: float) -> float | None:
    """The probe batch's measured seconds per item, or None if it is not done within ``timeout``."""
    backend = app.backend
    client, key = backend.client, backend.get_key_for_task(batch_id)
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        raw = client.get(key)
        if raw is not None:
            meta = backend.decode_result(raw)
            if meta.get("status") == states.SUCCESS and isinstance(meta.get("result"), dict):
                client.delete(key)
                value = meta["result"].get("per_item")
                return float(value) if isinstance(value, int | float) else None
            if meta.get("status") in states.READY_STATES:
                return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def _send_batches(sender: BatchSender, items: Items, size: int, chunk: int, results: list[AsyncResult]) -> None:
    """Batches of ``size`` items; ``chunk`` items per broker round trip (a bad item: its chunk is not sent).

    Each batch's items are tracked before it can leave (``track(unsent=True)``): the monitor then
    hears every state they store instead of reading, once the map returns, those stored already."""
    import sys

    producer = sender.producer
    batched = _compat.supports_batch_publish(producer)
    monitor = sender.monitor()
    pending: list[AsyncResult] = []
    tracked: list[str] = []  # tracked, not known to be sent
    try:
        with producer.batch(max_size=sys.maxsize) if batched else nullcontext() as pipe:
            while True:
                part = list(islice(items, size))
                if not part:
                    break
                pairs = sender.pairs(part)
                if monitor is not None:
                    ids = [item_id for item_id, _ in pairs]
                    monitor.track(ids, unsent=True)
                    tracked += ids
                sender.publish(part, pairs)
                pending.extend(sender.results(pairs))
                if not batched:
                    tracked.clear()  # published already
                if len(pending) >= chunk:
                    flush_sent(sender.app, pipe, pending, results)
                    tracked.clear()
            flush_sent(sender.app, pipe, pending, results)
            tracked.clear()
    finally:
        if tracked:  # the chunk that failed was not sent (a bad item, or the broker lost)
            monitor.untrack(tracked)
