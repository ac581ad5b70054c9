"""Batched map on the worker side: one ``celerynb.batch`` message runs many calls of a task.

``celerynb.map(task, items, batch=N)`` sends ``[name, [[item_id, args], ...], kwargs]`` to the
batch task. Each item keeps its own task id: the runner calls the real task with the request
context of that id (``self.request.id``, ``update_state``, ``celerynb.track`` refer to the
item), and stores each item's outcome under its id exactly as Celery's Redis backend does
(the result document SET with the backend's expiry, then PUBLISHed on the key's channel), a
group of items per pipeline.

Cancel: ``mark_cancelled`` (called by the displays' cancel) sets a marker key per id in the
result backend's Redis. The runner reads the markers of the remaining items with one MGET at
the start of the batch and at most every ``CHECK_EVERY`` seconds after, on any pool (a prefork
child never receives the revoke broadcast); in-process revokes are read at every item. A
cancelled item is stored REVOKED and not run.

Redelivery: the MGET at the start also reads the items' result keys, so a batch redelivered
after its worker died (``acks_late``) skips the items whose result is already ready. If the
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

logger = logging.getLogger("celerynb.batch")

#: The batch task, and its acks-late twin (for tasks that are acks-late: redelivered if the worker dies).
NAME = "celerynb.batch"
NAME_ACKS_LATE = "celerynb.batch_acks_late"
NAMES = (NAME, NAME_ACKS_LATE)
CANCEL_PREFIX = "celerynb:cancelled:"
#: Seconds between two reads of the remaining items' cancel markers.
CHECK_EVERY = 0.05
#: Results are stored at least this often (seconds of work), or every ``FLUSH_SIZE`` items.
FLUSH_EVERY = 0.01
FLUSH_SIZE = 256

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
    common = {"bind": True, "shared": False, "track_started": False, "typing": False}
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
        pipe.execute()


def run_batch(self: Task, name: str, items: list[list[Any]], kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``items`` (``[[item_id, args], ...]``) of task ``name``, one after the other.

    Returns what the kernel sizes batches from: items run, skipped, and the measured seconds
    per item (median run time plus the runner's own cost per item).
    """
    return BatchRunner(self, name, items, kwargs or {}).run()


def _redis_backend(backend: Any) -> bool:
    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # redis-py missing: no Redis backend either
        return False
    return isinstance(backend, RedisBackend)


class BatchRunner:
    """Runs the items of one batch message and stores each item's outcome under its own id."""

    def __init__(self, batch: Task, name: str, items: list[list[Any]], kwargs: dict[str, Any]) -> None:
        self.batch, self.name, self.kwargs = batch, name, kwargs
        self.app = batch.app
        self.items = [(str(item_id), tuple(args)) for item_id, args in items]
        self.task: Task | None = None
        self.backend = batch.backend
        self.pending: list[tuple[str, str, Any]] = []
        self.cancelled: set[str] = set()
        self.last_flush = self.last_check = time.perf_counter()

    # -- the items -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            self.task = self.app.tasks[self.name]
        except (KeyError, NotRegistered):
            self.task = None
        if self.task is not None:
            self.backend = self.task.backend
        self.fast = _redis_backend(self.backend)
        self.store = self.task is None or not self.task.ignore_result
        done = self._first_check()
        ran: list[float] = []
        skipped = 0
        redelivered = bool((self.batch.request.delivery_info or {}).get("redelivered"))
        base = self._base_request()
        for index, (item_id, args) in enumerate(self.items):
            if item_id in done:
                skipped += 1
                continue
            if self.fast and time.perf_counter() - self.last_check >= CHECK_EVERY:
                self._check_cancels(index)
            if item_id in self.cancelled or _compat.is_revoked(item_id):
                self._record(item_id, states.REVOKED, TaskRevokedError("cancelled"), None, base, args)
                skipped += 1
                continue
            if self.task is None:
                self._record(item_id, states.FAILURE, NotRegistered(self.name), None, base, args)
                continue
            if redelivered:
                self._mark_redelivered(item_id, base, args)
            t0 = time.perf_counter()
            self._run_one(item_id, args, base)
            ran.append(time.perf_counter() - t0)
            if len(self.pending) >= FLUSH_SIZE or time.perf_counter() - self.last_flush >= FLUSH_EVERY:
                self.flush()
        self.flush()
        total = time.perf_counter() - started
        per_item = None
        if ran:
            ran_sorted = sorted(ran)
            per_item = ran_sorted[len(ran) // 2] + max(0.0, total - sum(ran)) / len(ran)
        return {"items": len(self.items), "ran": len(ran), "skipped": skipped, "seconds": total, "per_item": per_item}

    def _base_request(self) -> dict[str, Any]:
        """The batch's request context, as each item's (its id, args and kwargs set per item)."""
        base = dict(vars(self.batch.request))
        for key in ("id", "args", "kwargs", "children", "argsrepr", "kwargsrepr", "root_id", "correlation_id"):
            base.pop(key, None)
        task = self.task
        base.update(task=self.name, parent_id=None, group=None, group_index=None, chord=None, chain=None,
                    callbacks=None, errbacks=None, called_directly=False, retries=0, is_eager=False,
                    ignore_result=bool(task is not None and task.ignore_result))
        return base

    def _run_one(self, item_id: str, args: tuple[Any, ...], base: dict[str, Any]) -> None:
        task = self.task
        assert task is not None
        kwargs = self.kwargs
        fun = task.run if type(task).__call__ is Task.__call__ else task
        task.push_request(**base, id=item_id, root_id=item_id, correlation_id=item_id, args=list(args),
                          kwargs=kwargs, children=[])
        _compat.push_current_task(task)
        try:
            signals.task_prerun.send(sender=task, task_id=item_id, task=task, args=args, kwargs=kwargs)
            try:
                value = fun(*args, **kwargs)
            except Ignore:  # TaskCancelled included: it marked its own state
                return
            except Retry as exc:  # self.retry() sent the item again, as a message of its own
                self._record(item_id, states.RETRY, exc.exc if exc.exc is not None else exc,
                             _traceback_text(exc), None, args)
                return
            except Exception as exc:  # noqa: BLE001 - one item's failure is that item's result
                self._on_failure(item_id, args, exc)
                return
            self._record(item_id, states.SUCCESS, value, None, None, args)
            task.on_success(value, item_id, args, kwargs)
            signals.task_success.send(sender=task, result=value)
        finally:
            signals.task_postrun.send(sender=task, task_id=item_id, task=task, args=args, kwargs=kwargs)
            _compat.pop_current_task()
            task.pop_request()

    def _on_failure(self, item_id: str, args: tuple[Any, ...], exc: Exception) -> None:
        from billiard.einfo import ExceptionInfo

        task = self.task
        assert task is not None
        einfo = ExceptionInfo()
        self._record(item_id, states.FAILURE, exc, einfo.traceback, None, args)
        try:
            task.on_failure(exc, item_id, args, self.kwargs, einfo)
        except Exception:  # noqa: BLE001 - a failing handler must not stop the other items
            logger.exception("on_failure of %s[%s] raised", self.name, item_id)
        signals.task_failure.send(sender=task, task_id=item_id, exception=exc, args=args, kwargs=self.kwargs,
                                  traceback=einfo.tb, einfo=einfo)

    def _mark_redelivered(self, item_id: str, base: dict[str, Any], args: tuple[Any, ...]) -> None:
        """As ``NotebookTask.before_start`` says for a message: this item runs a second time."""
        task = self.task
        if task is None or not task.track_started or not self.store:
            return
        self.flush()
        request = Context({**base, "id": item_id, "args": list(args), "kwargs": self.kwargs})
        self.backend.store_result(item_id, {"pid": os.getpid(), "hostname": base.get("hostname"),
                                            "redelivered": True}, states.STARTED, request=request)

    # -- results ---------------------------------------------------------------------------
    def _record(self, item_id: str, state: str, result: Any, traceback: str | None, base: dict[str, Any] | None,
                args: tuple[Any, ...]) -> None:
        """Store (or queue for the next pipeline) one item's outcome, as Celery's backend would."""
        if not self.store and state not in (states.REVOKED,):
            return
        task = self.task
        if base is None and task is not None:
            request = task.request  # the item's own context, pushed by _run_one
        else:
            request = Context({**(base or self._base_request()), "id": item_id,
                                                    "args": list(args), "kwargs": self.kwargs, "children": []})
        backend = self.backend
        if not self.fast:
            backend.store_result(item_id, result, state, traceback=traceback, request=request)
            return
        encoded = backend.encode_result(result, state)
        meta = _compat.result_meta(backend, encoded, state, traceback, request)
        meta["task_id"] = item_id
        self.pending.append((backend.get_key_for_task(item_id), state, backend.encode(meta)))

    def flush(self) -> None:
        """One pipeline: SET (with the backend's expiry) and PUBLISH of every queued result."""
        pending = self.pending
        if not pending:
            self.last_flush = time.perf_counter()
            return
        self.pending = []
        backend = self.backend
        backend.ensure(self._write, (pending,))
        self.last_flush = time.perf_counter()

    def _write(self, pending: list[tuple[str, str, Any]]) -> None:
        backend = self.backend
        expires = backend.expires
        failure_expires = getattr(backend, "failure_expires", None) or expires
        with backend.client.pipeline(transaction=False) as pipe:
            for key, state, value in pending:
                ttl = failure_expires if state == states.FAILURE else expires
                if ttl:
                    pipe.setex(key, ttl, value)
                else:
                    pipe.set(key, value)
                pipe.publish(key, value)
            pipe.execute()

    # -- what is already done or cancelled ----------------------------------------------------
    def _first_check(self) -> set[str]:
        """One MGET: items whose result is ready (a redelivered batch) and items cancelled already."""
        if not self.fast or not self.items:
            return set()
        backend = self.backend
        ids = [item_id for item_id, _ in self.items]
        values = backend.client.mget([backend.get_key_for_task(i) for i in ids] + [cancel_key(i) for i in ids])
        self.last_check = time.perf_counter()
        n = len(ids)
        done = set()
        for item_id, raw in zip(ids, values[:n], strict=True):
            if raw is not None and backend.decode_result(raw).get("status") in states.READY_STATES:
                done.add(item_id)
        self.cancelled.update(i for i, raw in zip(ids, values[n:], strict=True) if raw is not None)
        return done

    def _check_cancels(self, start: int) -> None:
        rest = [item_id for item_id, _ in self.items[start:]]
        if rest:
            values = self.backend.client.mget([cancel_key(i) for i in rest])
            self.cancelled.update(i for i, raw in zip(rest, values, strict=True) if raw is not None)
        self.last_check = time.perf_counter()


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
