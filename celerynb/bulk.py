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

import os
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
    items: Iterator[tuple[int, Any]] = enumerate(iterable)
    with app.producer_or_acquire() as producer, _no_subscribe_per_task(app):
        batched = producer.supports_batch_publish
        fast = _fast_setup(task, shared, options) if batched else None
        if fast is not None:
            rest = _template_publish(task, fast, items, producer, size, results)
            if rest is None:
                return
            items = rest
        send = _fast_sender(fast, producer) if fast is not None else None
        if send is None:
            send = _apply_async_sender(task, shared, options, producer, batched)
        pending: list[AsyncResult] = []
        with producer.batch(max_size=sys.maxsize) if batched else _nullbatch() as batch:
            for index, item in items:
                with _naming_errors(task, index, item, shared):
                    pending.append(send(_args_of(item), not (results or pending)))
                if len(pending) >= size:
                    _flush(app, batch, pending, results)
            _flush(app, batch, pending, results)


@contextmanager
def _naming_errors(task: Task, index: int, item: Any, shared: dict[str, Any]) -> Iterator[None]:
    """An item that cannot be sent is named by its position, with what is wrong."""
    try:
        yield
    except (EncodeError, ArgumentNotSerializable) as exc:
        raise _describe_encode_error(task, index, _args_of(item), shared, exc) from None
    except TypeError as exc:  # a wrong number of arguments, from Celery's signature check
        if "argument" in str(exc):
            raise TypeError(f"celerynb.map: item #{index} ({item!r:.80}) does not fit {task.name}: {exc}") from None
        raise


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


class _Fast:
    """What ``apply_async`` -> ``send_task`` compute per call but is the same for every item."""

    def __init__(self, task: Task, shared: dict[str, Any], options: dict[str, Any], opts: dict[str, Any]) -> None:
        app = task.app
        amqp = app.amqp
        self.shared, self.options, self.name = shared, options, task.name
        self.time_limit = opts.pop("time_limit", None)
        self.soft_time_limit = opts.pop("soft_time_limit", None)
        opts.pop("expires", None)
        self.ignore_result = opts.pop("ignore_result", None)
        self.routed = amqp.router.route(opts, task.name, (), shared, task)
        self.reply_to = app.thread_oid
        self.sent_event = app.conf.task_send_sent_event
        self.check = getattr(task, "__header__", None) if task.typing else None
        self.result_cls = task.AsyncResult
        self.create, self.publish = amqp.create_task_message, amqp.send_task_message
        self.maxsize = amqp.argsrepr_maxsize
        self.maxlevels = app.conf.task_repr_maxlevels
        self.kwargsrepr = saferepr(shared, amqp.kwargsrepr_maxsize, maxlevels=self.maxlevels)
        self.shadow_name = task.shadow_name
        self.plain_shadow = type(task).shadow_name is _base_shadow_name()

    def message(self, task_id: str, args: tuple[Any, ...]) -> Any:
        """Celery's own task message for one call (``amqp.create_task_message``)."""
        if self.check is not None:
            self.check(*args, **self.shared)
        shadow = self.shadow_name(args, self.shared, self.options)
        return self.create(task_id, self.name, args, self.shared, None, None, None, None, None, 0, None, None,
                           None, self.reply_to, self.time_limit, self.soft_time_limit, self.sent_event, None,
                           None, shadow, None, ignore_result=self.ignore_result, replaced_task_nesting=0,
                           argsrepr=_plain_repr(args, self.maxsize), kwargsrepr=self.kwargsrepr, **self.routed)

    def argsrepr(self, args: tuple[Any, ...]) -> str:
        """Exactly the ``argsrepr`` header Celery's ``as_task_v2`` writes."""
        text = _plain_repr(args, self.maxsize)
        return text if text is not None else saferepr(args, self.maxsize, maxlevels=self.maxlevels)

    def result(self, task_id: str) -> AsyncResult:
        result = self.result_cls(task_id)
        result.ignored = self.ignore_result
        return result


def _base_shadow_name() -> Any:
    from celery.app.task import Task as CeleryTask

    return CeleryTask.shadow_name


def _fast_setup(task: Task, shared: dict[str, Any], options: dict[str, Any]) -> _Fast | None:
    """Hoist the per-map work out of the per-item loop, or None when the task is unusual.

    Anything unusual (custom ``apply_async``, routers, ETAs, expiry, calls from inside a task)
    takes the general path: the task's own ``apply_async`` per item.
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
    return _Fast(task, shared, options, opts)


def _fast_sender(fast: _Fast, producer: Any) -> Any:
    """Celery's message builder and publisher (with its signals) per item, the setup hoisted."""
    publish, name, routed = fast.publish, fast.name, fast.routed

    def send(args: tuple[Any, ...], first: bool) -> AsyncResult:
        task_id = uuid()
        message = fast.message(task_id, args)
        if first:
            publish(producer, name, message, retry=False, **routed)
        else:
            publish(producer, name, message, retry=False, declare=[], **routed)
        return fast.result(task_id)

    return send


def _template_publish(task: Task, fast: _Fast, items: Iterator[tuple[int, Any]], producer: Any, size: int,
                      results: list[AsyncResult]) -> Iterator[tuple[int, Any]] | None:
    """Publish the first item Celery's way and the others as copies of its final Redis payload.

    Messages of one map differ only in the task id (``id``, ``root_id``, ``correlation_id``),
    ``argsrepr``, body and kombu's ``delivery_tag``. The first message goes through Celery and
    kombu completely (``before_task_publish``/``after_task_publish``, queue declaration) and is
    caught where kombu would LPUSH it; the others are that payload with those fields replaced,
    and the template must reproduce the first payload byte for byte before it is used. A
    chunk is one multi-value ``LPUSH``: the same list as one LPUSH per message.

    Returns None when every item was sent, or the items left for the general path when this
    one does not apply (receivers of Celery's publish signals other than celerynb's own, which
    may rewrite each message; sent events; a queue with expiry; a payload it cannot reproduce).
    """
    from celery import signals

    before = _own_receivers(signals.before_task_publish, fast.name)
    after = _own_receivers(signals.after_task_publish, fast.name)
    channel = producer.channel
    if before is None or after is None or fast.sent_event or not fast.plain_shadow:
        return items
    if not all(hasattr(channel, a) for a in ("_put", "_q_for_pri", "conn_or_acquire", "_expires")):
        return items  # not kombu's Redis transport
    first = next(items, None)
    if first is None:
        return None
    index, item = first
    task_id = uuid()
    caught: list[tuple[str, dict[str, Any]]] = []
    channel._put = lambda queue, message, **_: caught.append((queue, message))
    try:
        with _naming_errors(task, index, item, fast.shared):
            fast.publish(producer, fast.name, fast.message(task_id, _args_of(item)), retry=False, **fast.routed)
    finally:
        del channel._put
    template = _Template.build(channel, caught, task_id, fast, _args_of(item))
    if template is None:  # send the first message as kombu would have, the rest the general way
        for queue, message in caught:
            channel._put(queue, message)
        results.append(fast.result(task_id))
        return items
    app = task.app
    record = _submit_log() if after else None
    argsrepr, check, shared, render, result = fast.argsrepr, fast.check, fast.shared, template.render, fast.result
    payloads, pending = [template.payload], [result(task_id)]
    if record is not None:
        record(task_id, fast.name, argsrepr(_args_of(item)), fast.kwargsrepr)
    with channel.conn_or_acquire() as client:
        for index, item in items:
            args = item if isinstance(item, tuple) else (item,)
            with _naming_errors(task, index, item, shared):
                if check is not None:
                    check(*args, **shared)
                task_id, text = _uuid(), argsrepr(args)
                payloads.append(render(task_id, text, args))
            if record is not None:
                record(task_id, fast.name, text, fast.kwargsrepr)
            pending.append(result(task_id))
            if len(pending) >= size:
                _push(app, client, template.key, payloads, pending, results)
        _push(app, client, template.key, payloads, pending, results)
    return None


class _Template:
    """One map's final Redis payload with the per-task fields cut out, as a ``%`` format."""

    _FIELDS = ("body", "id", "root_id", "argsrepr", "correlation_id", "delivery_tag")

    def __init__(self, key: str, payload: str, fmt: str, slots: list[str], serializer: str, embed: Any,
                 shared: dict[str, Any], body_encoding: str, channel: Any, maxsize: int) -> None:
        self.key, self.payload, self.fmt, self.slots = key, payload, fmt, slots
        self.serializer, self.embed, self.shared = serializer, embed, shared
        self.encode_body, self.body_encoding = channel.encode_body, body_encoding
        self.maxsize = maxsize
        from kombu.serialization import registry
        from kombu.utils.json import dumps

        self.dumps = dumps
        # kombu's JSON is compositional: ``[args, kwargs, embed]`` is "[" + args + ", ..." (checked).
        self.suffix: str | None = None
        if serializer == "json" and registry._encoders["json"][2] is dumps:
            self.suffix = f", {dumps(shared)}, {dumps(embed)}]"

    @classmethod
    def build(cls, channel: Any, caught: list[tuple[str, dict[str, Any]]], task_id: str, fast: _Fast,
              args: tuple[Any, ...]) -> _Template | None:
        """The template of the one caught message, or None if it cannot reproduce it exactly."""
        from kombu.serialization import registry
        from kombu.utils.json import dumps

        if len(caught) != 1:
            return None
        queue, message = caught[0]
        if queue in channel._expires:
            return None  # kombu adds PEXPIRE commands per message there
        headers, props = message["headers"], message["properties"]
        serializer = registry.type_to_name.get(message["content-type"])
        if serializer is None or "compression" in headers or not isinstance(message["body"], str):
            return None
        if not headers.get("id") == headers.get("root_id") == props.get("correlation_id") == task_id:
            return None
        payload = dumps(message)  # what kombu's Redis ``_put`` pushes
        values = {"body": message["body"], "id": task_id, "root_id": task_id, "argsrepr": headers.get("argsrepr"),
                  "correlation_id": task_id, "delivery_tag": props.get("delivery_tag")}
        cuts = []
        for field in cls._FIELDS:
            needle = f'"{field}": {dumps(values[field])}'
            where = payload.find(needle)
            if where < 0 or payload.find(needle, where + 1) >= 0:
                return None
            cuts.append((where + len(field) + 4, where + len(needle), field))
        cuts.sort()
        pieces, slots, at = [], [], 0
        for start, end, field in cuts:
            pieces.append(payload[at:start].replace("%", "%%"))
            pieces.append("%s")
            slots.append(field)
            at = end
        pieces.append(payload[at:].replace("%", "%%"))
        try:
            embed = registry.loads(channel.decode_body(message["body"], props.get("body_encoding")),
                                   message["content-type"], message["content-encoding"])[2]
        except Exception:  # noqa: BLE001 - anything unexpected: the general path sends it
            return None
        template = cls(channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False)), payload,
                       "".join(pieces), slots, serializer, embed, fast.shared, props.get("body_encoding"), channel,
                       fast.maxsize)
        if template._render(task_id, fast.argsrepr(args), args, values["delivery_tag"]) != payload:
            return None
        return template

    def render(self, task_id: str, argsrepr: str, args: tuple[Any, ...]) -> str:
        return self._render(task_id, argsrepr, args, _uuid())

    def _render(self, task_id: str, argsrepr: str, args: tuple[Any, ...], tag: str) -> str:
        quoted = f'"{task_id}"'
        # base64 and the repr of plain numbers need no JSON escaping; anything else gets it.
        values = {"body": f'"{self._body(args)}"', "id": quoted, "root_id": quoted, "correlation_id": quoted,
                  "argsrepr": f'"{argsrepr}"' if _plain_repr(args, self.maxsize) == argsrepr else self.dumps(argsrepr),
                  "delivery_tag": f'"{tag}"'}
        return self.fmt % tuple(values[s] for s in self.slots)

    def _body(self, args: tuple[Any, ...]) -> str:
        """The base64 of ``[args, kwargs, embed]`` as kombu serializes it."""
        if self.suffix is None:
            from kombu.serialization import registry

            data = registry.dumps((args, self.shared, self.embed), self.serializer)[2]
        else:
            try:
                data = "[" + self.dumps(args) + self.suffix
            except (TypeError, ValueError, OverflowError) as exc:
                raise EncodeError(exc) from exc
        return self.encode_body(data, self.body_encoding)[0]


def _uuid() -> str:
    """A random (version 4) UUID string, as ``uuid.uuid4()`` makes from the same source, ~5x cheaper."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _own_receivers(signal: Any, sender: str) -> bool | None:
    """Whether celerynb's own receiver of ``signal`` is connected; None if anyone else's is."""
    from . import cluster, submitted

    live = getattr(signal, "_live_receivers", None)
    if live is None:
        return None
    receivers = live(sender)
    if any(r not in (cluster._on_publish, submitted._on_publish) for r in receivers):
        return None
    return bool(receivers)


def _submit_log() -> Any:
    from .submitted import submitted

    return submitted.record


def _push(app: Celery, client: Any, key: str, payloads: list[str], pending: list[AsyncResult],
          results: list[AsyncResult]) -> None:
    """One ``LPUSH`` of a chunk (atomic: all of it is queued, or none)."""
    if not payloads:
        return
    try:
        client.lpush(key, *payloads)
    except Exception as exc:  # noqa: BLE001 - redis wraps the connection error; ours says what to do
        _raise_lost(app, exc, len(pending), results)
    results.extend(pending)
    pending.clear()
    payloads.clear()


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
        _raise_lost(app, exc, len(pending), results)
    results.extend(pending)
    pending.clear()


def _raise_lost(app: Celery, exc: Exception, lost: int, results: list[AsyncResult]) -> None:
    raise BulkSubmitError(
        f"celerynb.map: the broker at {mask_url(app.conf.broker_url)} failed after {len(results)} "
        f"task(s) were sent ({type(exc).__name__}); the next {lost} may or may not have been "
        "delivered. Check the broker, then resubmit what is missing (exc.submitted has what was sent).",
        _group(app, list(results)),
    ) from None


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
