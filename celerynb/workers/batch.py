"""Batched map on the worker side: one ``celerynb.batch`` message runs many calls of a task.

``celerynb.map(task, items, batch=N)`` sends ``[name, [[item_id, args], ...], kwargs]`` to the
batch task. Each item keeps its own task id: the runner calls the real task with the request
context of that id (``self.request.id``, ``update_state``, ``celerynb.track`` refer to the
item), and stores each item's outcome under its id exactly as Celery's Redis backend does
(the result document SET with the backend's expiry, then PUBLISHed on the key's channel), a
group of items per pipeline (:mod:`celerynb.workers.batch_results`).

Cancel: ``mark_cancelled`` (called by the displays' cancel) sets a marker key per id in the
result backend's Redis and increments a counter; a batch message carries the counter as its
sender read it. The runner reads the counter at the start of the batch, every ``CHECK_EVERY``
seconds and after each item that ran ``LONG_ITEM`` or more, and the remaining items' markers
(one MGET) only when the counter moved; this works on any pool (a prefork child never receives the revoke broadcast), and
in-process revokes are read at every item. A cancelled item is stored REVOKED and not run.

Redelivery: a redelivered batch (its worker died, ``acks_late``) reads its items' results in
the same MGET at the start and skips the items whose result is already ready. If the
batch is not redelivered (not acks-late, a hard time limit), the worker's main process marks
the items without a ready result as FAILED with the batch's error, so none stays PENDING.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any

from celery import Celery, Task, signals, states
from celery.app.task import Context
from celery.exceptions import Ignore, NotRegistered, Retry, TaskRevokedError

from celerynb import _compat
from celerynb.workers import base, capture, started
from celerynb.workers.batch_results import FLUSH_SIZE, ResultBuffer, flusher

logger = logging.getLogger("celerynb.batch")

#: The batch task, and its acks-late twin (for tasks that are acks-late: redelivered if the worker dies).
NAME = "celerynb.batch"
NAME_ACKS_LATE = "celerynb.batch_acks_late"
NAMES = (NAME, NAME_ACKS_LATE)
CANCEL_PREFIX = "celerynb:cancelled:"
#: Incremented by every cancel: a running batch reads only this until it changes.
GENERATION = "celerynb:cancelled"
#: The most seconds between two reads of the cancel counter; read after every item that ran
#: ``LONG_ITEM`` seconds or more too (the read then costs little next to the work).
CHECK_EVERY = 0.05
LONG_ITEM = 0.01

_registered: weakref.WeakSet[Celery] = weakref.WeakSet()


def cancel_key(task_id: str) -> str:
    return CANCEL_PREFIX + task_id


def register(app: Celery) -> None:
    """Register the batch tasks on ``app``, so that ``celerynb.map(..., batch=N)`` can use them.

    celerynb's own app has them. For your own app, call this where the app is defined (the
    module your workers import): import/register it in your worker's app to enable batching.
    """
    if app in _registered:
        return
    # A plain Task: no STARTED of its own (its items report theirs), no submit hooks.
    common = {"base": Task, "bind": True, "shared": False, "track_started": False, "typing": False}
    app.task(name=NAME, **common)(run_batch)
    app.task(name=NAME_ACKS_LATE, acks_late=True, reject_on_worker_lost=True, **common)(run_batch)
    _registered.add(app)
    signals.task_failure.connect(_on_batch_failure, weak=False, dispatch_uid="celerynb-batch-failure")


def has_batch_task(app: Celery) -> bool:
    """Whether ``app`` knows the batch tasks (registered with :func:`register`)."""
    return app in _registered or NAME in _compat.task_registry(app)


def mark_cancelled(app: Celery, task_ids: list[str]) -> None:
    """Record a cancel of ``task_ids`` where every batch runner reads it (Redis result backends)."""
    backend = app.backend
    client = getattr(backend, "client", None)
    if client is None or not task_ids:
        return
    ttl = int(getattr(backend, "expires", None) or 24 * 3600)
    with client.pipeline(transaction=False) as pipe:
        for tid in task_ids:
            pipe.set(cancel_key(tid), b"1", ex=ttl)
        pipe.incr(GENERATION)  # after the markers: a batch that sees the new count finds them
        pipe.execute()


def run_batch(self: Task, name: str, items: list[list[Any]], kwargs: dict[str, Any] | None = None,
              cancels: Any = None) -> dict[str, Any]:
    """Run ``items`` (``[[item_id, args], ...]``) of task ``name``, one after the other.

    ``cancels`` is the cancel counter the sender read: while it is unchanged, no item of this
    batch can have been cancelled and no marker is read.

    Returns what the kernel sizes batches from: items run, skipped, and the measured seconds
    per item (median run time plus the runner's own cost per item).
    """
    return BatchRunner(self, name, items, kwargs or {}, cancels).run()


def cancel_count(app: Celery) -> Any:
    """The cancel counter now (what a batch message carries as ``cancels``)."""
    client = getattr(app.backend, "client", None)
    value = client.get(GENERATION) if client is not None else None
    return value.decode() if isinstance(value, bytes) else value


def _redis_backend(backend: Any) -> bool:
    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # redis-py missing: no Redis backend either
        return False
    return isinstance(backend, RedisBackend)


class BatchRunner:
    """Runs the items of one batch message and stores each item's outcome under its own id."""

    def __init__(self, batch: Task, name: str, items: list[list[Any]], kwargs: dict[str, Any],
                 cancels: Any = None) -> None:
        self.batch, self.name, self.kwargs, self.sent_count = batch, name, kwargs, cancels
        self.app = batch.app
        self.items = [(str(item_id), tuple(args)) for item_id, args in items]
        self.task: Task | None = None
        self.backend = batch.backend
        self.cancelled: set[str] = set()
        self.generation: Any = None
        self.last_check = time.perf_counter()

    # -- the items -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            self.task = self.app.tasks[self.name]
        except (KeyError, NotRegistered):
            self.task = None
        if self.task is not None:
            self.backend = self.task.backend
            self.fun = self._body(self.task)
            task = self.task
            self.prerun, self.postrun, self.success = (
                _signal_sender(signal, task) for signal in (signals.task_prerun, signals.task_postrun,
                                                            signals.task_success))
        self.fast = _redis_backend(self.backend)
        self.store = self.task is None or not self.task.ignore_result
        self.proto = self._item_context_fields()
        self.slot = base.slot()  # every item's timing says where it ran (one lane of a timeline)
        self.results = ResultBuffer(self.app, self.backend)
        done = self._first_check()
        if self.fast:
            flusher.add(self.results)
        try:
            return self._run_items(done)
        finally:
            flusher.discard(self.results)

    def _run_items(self, done: set[str]) -> dict[str, Any]:
        if self.task is None:
            return self._run_each(done)
        with _compat.item_requests(self.task, self.batch.request) as self.set_request:
            return self._run_each(done)

    def _run_each(self, done: set[str]) -> dict[str, Any]:
        started = time.perf_counter()
        ran: list[float] = []
        skipped = 0
        redelivered = bool((self.batch.request.delivery_info or {}).get("redelivered"))
        task = self.task
        long_item = False
        for index, (item_id, args) in enumerate(self.items):
            if item_id in done:
                skipped += 1
                continue
            if self.fast and (long_item or time.perf_counter() - self.last_check >= CHECK_EVERY):
                self._check_cancels(index)
                long_item = False
            context = self._context(item_id, args)
            if item_id in self.cancelled or _compat.is_revoked(item_id):
                self._record(context, states.REVOKED, TaskRevokedError("cancelled"), None)
                skipped += 1
                continue
            if task is None:
                self._record(context, states.FAILURE, NotRegistered(self.name), None)
                continue
            if redelivered:
                self._mark_redelivered(context)
            t0 = time.perf_counter()
            self._run_one(task, context)
            took = time.perf_counter() - t0
            ran.append(took)
            long_item = took >= LONG_ITEM
            if self.results.size() >= FLUSH_SIZE:
                self.flush()
        looped = time.perf_counter() - started
        self.flush()
        per_item = None
        if ran:  # the median run plus the runner's own cost per item (not its fixed round trips)
            ran.sort()
            per_item = ran[len(ran) // 2] + max(0.0, looped - sum(ran)) / len(ran)
        return {"items": len(self.items), "ran": len(ran), "skipped": skipped,
                "seconds": time.perf_counter() - started, "per_item": per_item}

    def _item_context_fields(self) -> dict[str, Any]:
        """The batch's request context as every item's, less what is the item's own."""
        fields = dict(vars(self.batch.request))
        for key in ("id", "args", "kwargs", "_children", "argsrepr", "kwargsrepr", "root_id", "correlation_id"):
            fields.pop(key, None)
        fields.update(task=self.name, parent_id=None, group=None, group_index=None, chord=None, chain=None,
                      callbacks=None, errbacks=None, called_directly=False, retries=0, is_eager=False,
                      ignore_result=not self.store)
        node = base.node_name()  # an in-kernel worker's items report its node name, as its tasks do
        if node:
            fields["hostname"] = node
        return vars(Context(fields))  # Context sets time_limit/soft_time_limit and headers once

    def _context(self, item_id: str, args: tuple[Any, ...]) -> Context:
        """The item's request context: the batch's, with the item's id, root id and arguments."""
        context = Context.__new__(Context)  # the fields are final already: no per-item __init__
        fields = context.__dict__
        fields.update(self.proto)
        fields.update(id=item_id, root_id=item_id, correlation_id=item_id, args=list(args), kwargs=self.kwargs)
        return context

    def _run_one(self, task: Task, context: Context) -> None:
        item_id, args, kwargs, fun = context.id, tuple(context.args), self.kwargs, self.fun
        self.set_request(context)  # task.request is the item's (celery.current_task is the task)
        try:
            self.prerun(task_id=item_id, task=task, args=args, kwargs=kwargs)
            # As NotebookTask.__call__ does: the item's stored states say when and where it ran.
            context.celerynb_started = (time.time(), time.perf_counter(), self.slot)
            try:
                value = fun(*args, **kwargs)
            except Ignore:  # TaskCancelled included: it marked its own state
                return
            except Retry as exc:  # self.retry() sent the item again, as a message of its own
                self._record(context, states.RETRY, exc.exc if exc.exc is not None else exc, _traceback_text(exc))
                return
            except Exception as exc:  # noqa: BLE001 - one item's failure is that item's result
                self._on_failure(task, context, exc)
                return
            self._record(context, states.SUCCESS, value, None)
            task.on_success(value, item_id, args, kwargs)
            self.success(result=value)
        finally:
            self.postrun(task_id=item_id, task=task, args=args, kwargs=kwargs)

    def _body(self, task: Task) -> Any:
        """What runs an item, as Celery's tracer picks it: ``run`` unless ``__call__`` is custom.

        ``NotebookTask.__call__`` and a cell's ``VersionCheckedTask.__call__`` are Celery's (which
        pushes the request and task again: done here already) inside ``started_later`` and
        ``capturing``: only those are kept, their checks made once per batch where they can be
        (the cell version is the batch message's; each item still gets its own captured logs).
        """
        from celerynb.workers import cells
        from celerynb.workers.base import NotebookTask

        call = type(task).__call__
        if call is Task.__call__:
            return task.run
        if call is cells.VersionCheckedTask.__call__:
            version = cells.message_version(self.batch.request)
            if version is not None and version != task._celerynb_record["version"]:
                return task  # another version of the cell: its own __call__ loads and runs it
        elif call is not NotebookTask.__call__:
            return task
        body = task.run
        reports = started.reports_started(task)  # what started_later asks per call, once per batch
        reporter = started.reporter

        def run(*args: Any, **kwargs: Any) -> Any:
            request = task.request
            with capture.capturing(task, request):  # each item's output is its own logs
                if not reports:
                    return body(*args, **kwargs)
                reporter.schedule(task, request)
                try:
                    return body(*args, **kwargs)
                finally:
                    reporter.cancel(request.id)
        return run

    def _on_failure(self, task: Task, context: Context, exc: Exception) -> None:
        from billiard.einfo import ExceptionInfo

        einfo = ExceptionInfo()
        self._record(context, states.FAILURE, exc, einfo.traceback)
        args = tuple(context.args)
        try:
            task.on_failure(exc, context.id, args, self.kwargs, einfo)
        except Exception:  # noqa: BLE001 - a failing handler must not stop the other items
            logger.exception("on_failure of %s[%s] raised", self.name, context.id)
        signals.task_failure.send(sender=task, task_id=context.id, exception=exc, args=args, kwargs=self.kwargs,
                                  traceback=einfo.tb, einfo=einfo)

    def _mark_redelivered(self, context: Context) -> None:
        """As ``NotebookTask.before_start`` says for a message: this item runs a second time."""
        task = self.task
        if task is None or not self.store or not (task.track_started or started.reports_started(task)):
            return
        self.flush()
        self.backend.store_result(context.id, {"pid": os.getpid(), "hostname": context.hostname,
                                               "redelivered": True}, states.STARTED, request=context)

    # -- results ---------------------------------------------------------------------------
    def _record(self, context: Context, state: str, result: Any, traceback: str | None) -> None:
        """Store (or queue for the next pipeline) one item's outcome, as Celery's backend would."""
        if not self.store and state != states.REVOKED:
            return
        if not self.fast or state == states.RETRY:  # a RETRY at once (never over its rerun's SUCCESS)
            self.backend.store_result(context.id, result, state, traceback=traceback, request=context)
            return
        self.results.add(context, state, result, traceback)

    def flush(self) -> None:
        self.results.flush()

    # -- what is already done or cancelled ----------------------------------------------------
    def _first_check(self) -> set[str]:
        """One MGET: the cancel counter and, for a redelivered batch, the items' results.

        Returns the items whose result is ready already; a counter moved since the batch was
        sent means a cancel came meanwhile: the items' markers are read too.
        """
        if not self.fast or not self.items:
            return set()
        backend = self.backend
        ids = [item_id for item_id, _ in self.items]
        redelivered = bool((self.batch.request.delivery_info or {}).get("redelivered"))
        keys = self.results.keys = {i: backend.get_key_for_task(i) for i in ids} if redelivered else {}
        values = backend.client.mget([GENERATION, *keys.values()])
        self.last_check = time.perf_counter()
        self.generation = values[0]
        sent = self.sent_count
        if self.generation is not None and (sent is None or str(sent).encode() != self.generation):
            self._check_cancels(0)
        done = set()
        for item_id, raw in zip(keys, values[1:], strict=True):
            if raw is not None and backend.decode_result(raw).get("status") in states.READY_STATES:
                done.add(item_id)
        return done

    def _check_cancels(self, start: int) -> None:
        """One GET of the cancel counter; the remaining items' markers only if a cancel came since."""
        client = self.backend.client
        generation = client.get(GENERATION) if start else self.generation
        if start == 0 or generation != self.generation:
            self.generation = generation
            rest = [item_id for item_id, _ in self.items[start:]]
            if rest:
                values = client.mget([cancel_key(i) for i in rest])
                self.cancelled.update(i for i, raw in zip(rest, values, strict=True) if raw is not None)
        self.last_check = time.perf_counter()


_signal_logger = logging.getLogger("celery.utils.dispatch.signal")


def _signal_sender(signal: Any, task: Task) -> Any:
    """``signal.send(sender=task, ...)`` for every item of a batch, to the receivers connected
    when the batch starts, as ``Signal.send`` calls them (one that raises is logged, the others
    still run). ``Signal.send`` looks its receivers up under the signal's one lock on every
    call: three sends per item made the pool threads queue behind each other on it."""
    receivers = _compat.live_receivers(signal, task) or []

    def send(**named: Any) -> None:
        for receiver in receivers:
            try:
                receiver(signal=signal, sender=task, **named)
            except Exception as exc:  # noqa: BLE001 - as Signal.send: logged, the others still called
                _signal_logger.exception("Signal handler %r raised: %r", receiver, exc)
    return send


def _traceback_text(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _on_batch_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                      args: Any = None, **_: Any) -> None:
    """A batch that ended in FAILURE (its worker died, a hard time limit): fail its unfinished items.

    Runs where Celery reports the failure (the worker's main process for a lost prefork child),
    so no item of a batch that will not run again stays PENDING.
    """
    if getattr(sender, "name", None) not in NAMES or not args or len(args) < 2:
        return
    try:
        items = [(str(i), a) for i, a in args[1]]
        backend = sender.backend
        keys = [backend.get_key_for_task(i) for i, _ in items]
        values = backend.client.mget(keys) if _redis_backend(backend) else [None] * len(items)
        error = exception if isinstance(exception, BaseException) else RuntimeError(str(exception))
        for (item_id, item_args), raw in zip(items, values, strict=True):
            if raw is not None and backend.decode_result(raw).get("status") in states.READY_STATES:
                continue
            request = Context({"id": item_id, "task": args[0], "args": item_args,
                                                    "kwargs": args[2] if len(args) > 2 else {}})
            backend.store_result(item_id, error, states.FAILURE, traceback=None, request=request)
    except Exception:  # noqa: BLE001 - never break the worker's failure handling
        logger.exception("could not mark the items of batch %s as failed", task_id)
