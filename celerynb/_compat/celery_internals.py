"""Celery's internals celerynb reaches for (checked on celery 5.7.0)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, Task

# -- Celery: the worker's process-wide state ---------------------------------------------------


def request_worker_stop(*, cold: bool) -> None:
    """Ask every worker of this process to stop, warm (running tasks finish) or cold, as Celery's signal
    handlers do: ``celery.worker.state.should_stop`` / ``should_terminate`` (celery 5.7.0)."""
    from celery.worker import state

    if cold:
        state.should_terminate = 0
    else:
        state.should_stop = 0


def clear_worker_stop_flags() -> None:
    """Reset those flags, or a worker started later in this process exits at once (celery 5.7.0)."""
    from celery.worker import state

    state.should_terminate = None
    state.should_stop = None


def active_request_ids() -> list[str]:
    """Ids of the tasks running in this process's workers (``celery.worker.state.active_requests``, 5.7.0)."""
    from celery.worker import state

    return [request.id for request in list(state.active_requests)]


def allow_result_get() -> None:
    """Undo the "task join will block" flag a worker start sets, so ``result.get()`` works in the kernel:
    ``celery.result._set_task_join_will_block`` (celery 5.7.0), as ``celery.contrib.testing`` does."""
    from celery.result import _set_task_join_will_block

    _set_task_join_will_block(False)


def eager_value(result: Any) -> Any:
    """The raw return value (or exception) an ``EagerResult`` holds: ``EagerResult._result`` (5.7.0)."""
    return result._result


# -- Celery: which app is current ------------------------------------------------------------------


def celery_current_apps() -> tuple[Celery | None, Celery | None]:
    """This thread's current app and the process default, None where unset: ``celery._state._tls.current_app``
    / ``default_app`` (celery 5.7.0); ``celery.current_app`` would create Celery's fallback app."""
    from celery import _state

    return _state._tls.current_app, _state.default_app


def set_celery_current_apps(current: Celery | None, default: Celery | None) -> None:
    """Put back what :func:`celery_current_apps` returned, None included (celery 5.7.0)."""
    from celery import _state

    _state._tls.current_app = current
    _state.set_default_app(default)


# -- Celery: an app moved to new URLs ------------------------------------------------------------


def drop_app_connection_caches(app: Celery) -> None:
    """Forget the pools and per-thread result backend an app cached: ``Celery._pool``, ``AMQP._producer_pool``,
    ``Celery._backend_cache``, ``Celery._local`` (celery 5.7.0), ``Mailbox.producer_pool`` (kombu 5.7.0)."""
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    control = app.__dict__.get("control")
    if control is not None:  # the mailbox caches the producer pool it first used (inspect/ping)
        control.mailbox.__dict__.pop("producer_pool", None)
    # The result backend is cached per thread: a fresh thread-local drops it everywhere.
    app._backend_cache = None
    app._local = threading.local()


def result_backend_if_created(app: Celery) -> Any:
    """This thread's result backend if one was made, without creating one: ``Celery._backend`` (5.7.0)."""
    return app._backend


def take_result_pubsub(backend: Any) -> Any:
    """Detach the Redis result consumer's pub/sub (returned, to close; or None) and forget its subscriptions:
    ``ResultConsumer._pubsub``, ``subscribed_to``, ``_pending_unsubscribe`` (celery 5.7.0; not in 5.5)."""
    consumer = getattr(backend, "result_consumer", None)
    pubsub = getattr(consumer, "_pubsub", None)
    if consumer is None or pubsub is None:
        return None
    consumer._pubsub = None
    consumer.subscribed_to.clear()
    pending = getattr(consumer, "_pending_unsubscribe", None)
    if pending is not None:
        pending.clear()
    return pubsub


def drop_kombu_pools(connection: Any) -> list[Any]:
    """Remove (and return, to close) kombu's process-wide connection and producer pools for ``connection``'s
    URL: ``kombu.pools.connections`` / ``producers``, keyed by ``kombu.utils.collections.eqhash`` (5.7.0)."""
    from kombu import pools
    from kombu.utils.collections import eqhash

    key = eqhash(connection)
    return [pool for pool in (group.pop(key, None) for group in (pools.producers, pools.connections)) if pool]


def task_registry(app: Celery) -> dict[str, Task]:
    """The app's task registry without finalizing the app (``app.tasks`` would): ``Celery._tasks`` (5.7.0)."""
    return app._tasks


def replace_task_registry(app: Celery, registry: dict[str, Task]) -> None:
    """Give an app another task registry (cell tasks resolved on lookup): ``Celery._tasks`` (5.7.0)."""
    app._tasks = registry


# -- Celery: a task's sending path -----------------------------------------------------------------


def exec_options(task: Task) -> dict[str, Any]:
    """The task's default ``apply_async`` options: ``Task._get_exec_options()`` (celery 5.7.0)."""
    return task._get_exec_options()


def sends_plain_messages(task: Task) -> bool:
    """False for tasks whose messages Celery builds another way (v1 protocol, pydantic arguments):
    ``Task.__v2_compat__`` and ``Task._dump_pydantic_arguments`` (celery 5.7.0)."""
    return not task.__v2_compat__ and getattr(task, "_dump_pydantic_arguments", None) is None


def live_receivers(signal: Any, sender: Any) -> list[Callable[..., Any]] | None:
    """The receivers a Celery signal would call for ``sender``: ``Signal._live_receivers`` (5.7.0)."""
    live = getattr(signal, "_live_receivers", None)
    return None if live is None else list(live(sender))


@contextmanager
def no_result_subscribe_per_task(app: Celery) -> Iterator[None]:
    """Skip the Redis result backend's SUBSCRIBE per published task in this thread: shadows the thread-local
    backend's ``on_task_call`` (celery 5.7.0, ``AsyncBackendMixin``)."""
    backend = app.backend
    if not hasattr(backend, "result_consumer") or "on_task_call" in vars(backend):
        yield
        return
    backend.on_task_call = lambda *_, **__: None
    try:
        yield
    finally:
        del backend.on_task_call


# -- Celery: results made by the thousand ------------------------------------------------------


def _lazy_result_class() -> type:
    from celery.result import AsyncResult
    from vine import promise

    class ItemResult(AsyncResult):
        """An ``AsyncResult`` whose ``on_ready`` promise (half the cost of one made by celery 5.7.0's
        ``__init__``) is made on first use: a map makes thousands only ``then()``/``get()`` touch."""

        def __init__(self, id: str, backend: Any = None, task_name: str | None = None,  # noqa: A002
                     app: Any = None, parent: Any = None) -> None:
            self.app = app
            self.id = id
            self.backend = backend
            self.parent = parent
            self._cache = None
            self._ignored = False

        @property
        def on_ready(self) -> Any:
            ready = self.__dict__.get("_on_ready")
            if ready is None:
                ready = self.__dict__["_on_ready"] = promise(self._on_fulfilled, weak=True)
            return ready

    return ItemResult


_item_result_class: type | None = None


def item_results(task: Task, task_ids: list[str]) -> list[Any]:
    """``task.AsyncResult(id)`` for every id (same app and backend), made cheaply (``ItemResult``)."""
    global _item_result_class
    if _item_result_class is None:
        _item_result_class = _lazy_result_class()
    cls, backend, app = _item_result_class, task.backend, task.app
    return [cls(tid, backend, task.name, app) for tid in task_ids]


def mark_revoked(task_id: str) -> None:
    """Revoke a task in this process's workers now, not at a broadcast's turn: ``worker.state.revoked`` (celery 5.7.0)."""
    _revoked().add(task_id)


def is_revoked(task_id: str) -> bool:
    """Whether this process's workers hold ``task_id`` as revoked (``celery.worker.state.revoked``, 5.7.0).
    Asked once per item of a batch: the set is looked up once per process, not imported per call."""
    return task_id in (_revoked_ids or _revoked())


_revoked_ids: Any = None


def _revoked() -> Any:
    global _revoked_ids
    if _revoked_ids is None:
        from celery.worker import state

        _revoked_ids = state.revoked
    return _revoked_ids


def eager_task_name(result: Any) -> str | None:
    """The task name an ``EagerResult`` was made for: ``EagerResult._name`` (celery 5.7.0)."""
    return getattr(result, "_name", None)


def unproxied(task: Any) -> Any:
    """The task behind the lazy proxy ``@app.task`` can hand out: ``Proxy._get_current_object`` (celery 5.7.0)."""
    resolve = getattr(task, "_get_current_object", None)
    return task if resolve is None else resolve()


# -- Celery: storing a task's state -------------------------------------------------------------------


def route_redis_result_stores(store: Callable[..., bool]) -> None:
    """Let ``store(backend, task_id, result, state, traceback, request)`` store the states of Redis
    result backends; when it returns False, ``RedisBackend._store_result`` (celery 5.7.0) does.
    ``store_result`` calls either with its retries and the result already encoded. Idempotent."""
    from celery.backends.redis import RedisBackend

    current = RedisBackend._store_result
    original = getattr(current, "__wrapped__", current)

    def _store_result(self: Any, task_id: str, result: Any, state: str, traceback: str | None = None,
                      request: Any = None, **kwargs: Any) -> Any:
        if store(self, task_id, result, state, traceback, request):
            return result
        return original(self, task_id, result, state, traceback, request, **kwargs)

    _store_result.__wrapped__ = original  # type: ignore[attr-defined]
    RedisBackend._store_result = _store_result


_on_get: dict[str, Callable[..., Any]] = {}


def explain_result_errors(explain: Callable[[Any, str], str | None] | None = None,
                          annotate: Callable[[Any, BaseException], None] | None = None) -> None:
    """``get()`` (``AsyncBackendMixin.wait_for_pending``, celery 5.7.0: Redis, RPC) times out with ``explain(backend,
    task_id)``, unchained, when that names a cause; a task's exception gets ``annotate(result, exc)`` first."""
    from celery.backends.asynchronous import AsyncBackendMixin
    from celery.exceptions import TimeoutError as ResultTimeout

    _on_get.update({k: f for k, f in (("explain", explain), ("annotate", annotate)) if f is not None})
    original = getattr(AsyncBackendMixin.wait_for_pending, "__wrapped__", AsyncBackendMixin.wait_for_pending)

    def wait_for_pending(self: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # noqa: F841 - IPython leaves this frame out of tracebacks
        if "_celerynb_sent_subscribed" in self.__dict__:
            _read_later(self, result, kwargs)
        try:
            return original(self, result, *args, **kwargs)
        except ResultTimeout:
            reason = _on_get["explain"](self, result.id) if "explain" in _on_get else None
            if reason is None:
                raise
        except BaseException as exc:  # noted (the task's frames replace Celery's and vine's); an interrupt too
            raise noted_get_error(result, exc)  # noqa: B904
        raise ResultTimeout(reason) from None

    wait_for_pending.__wrapped__ = original  # type: ignore[attr-defined]
    AsyncBackendMixin.wait_for_pending = wait_for_pending


#: Tasks whose result a backend subscribed to as it sent them, remembered per backend (oldest dropped).
_SENT_SUBSCRIBED_MAX = 16_384
#: Longest a ``get()`` of such a task waits for its pushed state before reading it once anyway.
READ_LATER_AFTER = 1.0


_served_here: Callable[[str], bool] | None = None


def skip_result_subscriptions(served_here: Callable[[str], bool]) -> None:
    """No SUBSCRIBE when sending a task for which ``served_here(task_id)`` is true (its result
    reaches the caller another way). Installs :func:`skip_redundant_result_reads` too."""
    global _served_here
    _served_here = served_here
    skip_redundant_result_reads()


def skip_redundant_result_reads() -> None:
    """``get()`` of a task its Redis result backend subscribed to when sending it (``on_task_call``) waits for
    the pushed state and reads the stored one only after ``READ_LATER_AFTER`` s without it (not with a
    ``timeout`` under 3 s). Celery 5.7.0 reads it first (``ResultConsumer.on_wait_for_pending``), a round trip per call
    that only matters when the subscription came too late or the pushed state was dropped from the full
    ``BufferMap``: then the read is done at once, as by Celery. Idempotent."""
    from celery.backends.redis import RedisBackend, ResultConsumer
    from celery.utils.collections import BufferMap

    if getattr(ResultConsumer.on_wait_for_pending, "__wrapped__", None) is not None:
        return
    on_task_call, on_wait_for_pending = RedisBackend.on_task_call, ResultConsumer.on_wait_for_pending
    pop_to_evict = BufferMap._pop_to_evict

    def _on_task_call(self: Any, producer: Any, task_id: str) -> None:
        if _served_here is not None and _served_here(task_id):
            return  # its end state is handed over in this process (celerynb.workers.local_results)
        on_task_call(self, producer, task_id)
        consumer = self.result_consumer
        if consumer._get_key_for_task(task_id) in consumer.subscribed_to:
            sent = self.__dict__.setdefault("_celerynb_sent_subscribed", {})
            sent[task_id] = None
            if len(sent) > _SENT_SUBSCRIBED_MAX:
                sent.pop(next(iter(sent), None), None)

    def _on_wait_for_pending(self: Any, result: Any, **kwargs: Any) -> None:
        if not result.__dict__.pop("_celerynb_skip_first_read", False):
            on_wait_for_pending(self, result, **kwargs)

    def _pop_to_evict(self: Any) -> None:
        self._celerynb_evicted = True  # a pushed state may be gone: reads come first again
        pop_to_evict(self)

    _on_wait_for_pending.__wrapped__ = on_wait_for_pending  # type: ignore[attr-defined]
    RedisBackend.on_task_call = _on_task_call
    ResultConsumer.on_wait_for_pending = _on_wait_for_pending
    BufferMap._pop_to_evict = _pop_to_evict


def _read_later(backend: Any, result: Any, kwargs: dict[str, Any]) -> None:
    """Arrange for ``wait_for_pending`` to skip the first read of ``result`` (see :func:`skip_redundant_result_reads`)."""
    sent = backend.__dict__.get("_celerynb_sent_subscribed")
    if not sent or result.id not in sent:
        return
    del sent[result.id]
    timeout = kwargs.get("timeout")
    if getattr(backend._pending_messages, "_celerynb_evicted", False) or (timeout is not None and timeout < 3 * READ_LATER_AFTER):
        return  # a short timeout: the read first, as Celery does (its waits last up to a second)
    started, read = time.monotonic(), list[bool]()
    consumer, on_interval = backend.result_consumer, kwargs.get("on_interval")
    result._celerynb_skip_first_read = True

    def read_once_late() -> None:  # called after every wait: a message, or a second without one
        if not read and time.monotonic() - started >= READ_LATER_AFTER:
            read.append(True)
            consumer.on_wait_for_pending(result, timeout=timeout)  # Celery's read, the skip used up
        if on_interval is not None:
            on_interval()

    kwargs["on_interval"] = read_once_late


def noted_get_error(result: Any, exc: BaseException) -> BaseException:
    """What a ``get()`` of ``result`` that ended in ``exc`` raises: ``exc`` with the note
    :func:`explain_result_errors` adds (a task's frames, the tasks an interrupt left running)."""
    _on_get.get("annotate", lambda *_: None)(result, exc)
    return exc.with_traceback(None) if getattr(exc, "_celerynb_noted", False) else exc


def settle_result(result: Any, meta: dict[str, Any]) -> bool:
    """Give ``result`` the state ``meta`` (a decoded result document) when it is an end state, as a
    pushed state does: ``AsyncResult._maybe_set_cache`` (celery 5.7.0). True once it has one."""
    result._maybe_set_cache(meta)
    return bool(result._cache)


def finish_get(result: Any, *, propagate: bool = True, callback: Callable[..., Any] | None = None) -> Any:
    """End ``result.get()`` for a result :func:`settle_result` settled, as Celery's own wait ends (the
    patched ``wait_for_pending``: a task's exception noted with its frames), without its first read."""
    result._celerynb_skip_first_read = True
    return result.backend.wait_for_pending(result, callback=callback, propagate=propagate)


# -- Celery: running the items of a batch as tasks of their own -------------------------------------


def result_meta(backend: Any, result: Any, state: str, traceback: str | None, request: Any) -> dict[str, Any]:
    """The result document Celery's backend stores for a task: ``Backend._get_result_meta`` (celery 5.7.0).
    ``result`` is already encoded; the caller adds ``task_id``, as ``_store_result`` does."""
    return backend._get_result_meta(result=result, state=state, traceback=traceback, request=request)


@contextmanager
def item_requests(task: Task, first: Any) -> Iterator[Callable[[Any], None]]:
    """Run many requests of ``task`` one after the other in this thread, as Celery's tracer runs
    one: yields ``set_request(context)``, after which ``task.request`` is ``context`` and
    ``celery.current_task`` is ``task``. The request is pushed once and the top of the thread's
    stack replaced per item: ``Task.request_stack._local.stack`` and ``celery._state._task_stack``
    (celery 5.7.0); a push and pop of both per item cost ~10 % of a small item's time."""
    from celery._state import _task_stack

    stack = task.request_stack
    stack.push(first)
    _task_stack.push(task)
    try:
        frames = getattr(getattr(stack, "_local", None), "stack", None)
        if isinstance(frames, list) and frames and frames[-1] is first:
            def set_request(context: Any) -> None:
                frames[-1] = context
        else:  # another layout: a pop and push per item
            def set_request(context: Any) -> None:
                stack.pop()
                stack.push(context)
        yield set_request
    finally:
        _task_stack.pop()
        stack.pop()

