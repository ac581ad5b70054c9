"""Redis only: the first message of a map goes through Celery and kombu, the others are
copies of its final payload with the per-task fields replaced, one ``LPUSH`` per chunk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from celery import Celery, Task
from celery.result import AsyncResult
from celery.utils import uuid
from kombu.exceptions import EncodeError

from celerynb import _compat
from celerynb.bulk.calls import args_of, naming_errors, raise_lost
from celerynb.bulk.messages import MapMessages, plain_repr


def publish_as_copies(task: Task, fast: MapMessages, items: Iterator[tuple[int, Any]], producer: Any, size: int,
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
    may rewrite each message; a queue with expiry; a payload it cannot reproduce).

    These messages carry no ``task-sent`` event (a map of 10,000 items would publish 10,000 and
    lose most of this path's gain): their tasks show in the cluster monitor as waiting in the
    Redis queue, then from the workers' ``task-received`` events, as a plain client's do.
    """
    from celery import signals

    before = _own_receivers(signals.before_task_publish, fast.name)
    after = _own_receivers(signals.after_task_publish, fast.name)
    channel = producer.channel
    if before is None or after is None or not fast.plain_shadow:
        return items
    if not _compat.is_redis_channel(channel):
        return items  # not kombu's Redis transport
    first = next(items, None)
    if first is None:
        return None
    index, item = first
    task_id = uuid()
    sent_event, fast.sent_event = fast.sent_event, False  # no task-sent events here (see above)
    try:
        with _compat.caught_puts(channel) as caught, naming_errors(task, index, item, fast.shared):
            fast.publish(producer, fast.name, fast.message(task_id, args_of(item)), retry=False, **fast.routed)
        template = _Template.build(channel, caught, task_id, fast, args_of(item))
    finally:
        fast.sent_event = sent_event
    if template is None:  # send the first message as kombu would have, the rest the general way
        for queue, message in caught:
            _compat.put(channel, queue, message)
        results.append(fast.result(task_id))
        return items
    app = task.app
    record = _submit_log() if after else None
    argsrepr, check, shared, render, result = fast.argsrepr, fast.check, fast.shared, template.render, fast.result
    payloads, pending = [template.payload], [result(task_id)]
    if record is not None:
        record(task_id, fast.name, argsrepr(args_of(item)), fast.kwargsrepr)
    with channel.conn_or_acquire() as client:
        for index, item in items:
            args = item if isinstance(item, tuple) else (item,)
            with naming_errors(task, index, item, shared):
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
        from kombu.utils.json import dumps

        self.dumps = dumps
        # kombu's JSON is compositional: ``[args, kwargs, embed]`` is "[" + args + ", ..." (checked).
        self.suffix: str | None = None
        if serializer == "json" and _compat.json_codec_is(dumps):
            self.suffix = f", {dumps(shared)}, {dumps(embed)}]"

    @classmethod
    def build(cls, channel: Any, caught: list[tuple[str, dict[str, Any]]], task_id: str, fast: MapMessages,
              args: tuple[Any, ...]) -> _Template | None:
        """The template of the one caught message, or None if it cannot reproduce it exactly."""
        from kombu.serialization import registry
        from kombu.utils.json import dumps

        if len(caught) != 1:
            return None
        queue, message = caught[0]
        if _compat.queue_expires(channel, queue):
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
        template = cls(_compat.redis_list_key(channel, queue, message), payload,
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
                  "argsrepr": f'"{argsrepr}"' if plain_repr(args, self.maxsize) == argsrepr else self.dumps(argsrepr),
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
    from celerynb.cluster import session
    from celerynb.tracking import submitted

    receivers = _compat.live_receivers(signal, sender)
    if receivers is None:
        return None
    if any(r not in (session.on_publish, submitted.on_publish) for r in receivers):
        return None
    return bool(receivers)


def _submit_log() -> Any:
    from celerynb.tracking.submitted import submitted

    return submitted.record


def _push(app: Celery, client: Any, key: str, payloads: list[str], pending: list[AsyncResult],
          results: list[AsyncResult]) -> None:
    """One ``LPUSH`` of a chunk (atomic: all of it is queued, or none)."""
    if not payloads:
        return
    try:
        client.lpush(key, *payloads)
    except Exception as exc:  # noqa: BLE001 - redis wraps the connection error; ours says what to do
        raise_lost(app, exc, len(pending), results)
    results.extend(pending)
    pending.clear()
    payloads.clear()
