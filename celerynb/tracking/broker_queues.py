"""What waits in the broker's queues, read without consuming a message.

Redis: a queue is a list (one per priority step) that kombu LPUSHes to and a worker BRPOPs from,
so ``LRANGE`` shows the waiting messages, the next to run at the tail, and their kombu headers
carry the task id and name. AMQP (RabbitMQ) cannot show a message without consuming it: there
only the depth is known (a passive ``queue_declare``), and a task that waits there is seen once
a worker receives it (its ``task-received`` event) or once its sender's ``task-sent`` event arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celerynb import _compat

#: Messages read from the head of each queue for a picture (the next ones to run).
PEEK = 200
#: At most this many messages of a queue are read to find one task id (in chunks of ``CHUNK``).
SCAN = 20_000
CHUNK = 1000


@dataclass(frozen=True)
class Waiting:
    """A task message waiting in a queue; ``position`` 1 is the next one a worker takes."""

    task_id: str
    name: str | None
    queue: str
    position: int


def decode(raw: bytes | str) -> tuple[str | None, str | None]:
    """(task id, task name) of a kombu Redis message (Celery's protocol 2 headers; protocol 1: the id)."""
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None, None
    if not isinstance(message, dict):
        return None, None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    task_id = headers.get("id") or properties.get("correlation_id")
    return (str(task_id) if task_id else None), headers.get("task")


def _lrange(channel: Any, key: str, start: int, end: int) -> list[bytes]:
    """LRANGE with the transport's ``global_keyprefix`` (kombu's client prefixes LLEN, not LRANGE)."""
    return channel.client.lrange((getattr(channel, "global_keyprefix", "") or "") + key, start, end)


class QueueReader:
    """Depths and waiting tasks of named queues, on one connection of its own (one thread uses it)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._conn: Any = None

    @property
    def can_peek(self) -> bool:
        """Whether waiting messages can be read without consuming them (kombu's Redis transport)."""
        return self._channel_is_redis(self._channel())

    def _channel(self) -> Any:
        if self._conn is None:
            self._conn = self.app.connection_for_read()
        return self._conn.default_channel

    @staticmethod
    def _channel_is_redis(channel: Any) -> bool:
        return _compat.is_redis_channel(channel) and hasattr(channel, "priority_steps")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001 - the broker may be gone
                pass

    def declared(self) -> list[str]:
        """Queues the broker knows, consumed or not (Redis: kombu's bindings; elsewhere none)."""
        channel = self._channel()
        return _compat.redis_bound_queues(channel) if self._channel_is_redis(channel) else []

    def depths(self, names: list[str]) -> dict[str, int]:
        """Messages waiting in each queue (0 for one the broker does not know)."""
        channel = self._channel()
        found: dict[str, int] = {}
        if self._channel_is_redis(channel):
            with channel.client.pipeline() as pipe:
                spans = []
                for name in names:
                    lists = _compat.redis_queue_lists(channel, name)
                    spans.append(len(lists))
                    for key in lists:
                        pipe.llen(key)
                lengths = pipe.execute()
            at = 0
            for name, span in zip(names, spans, strict=True):
                found[name] = sum(int(n or 0) for n in lengths[at:at + span])
                at += span
            return found
        for name in names:  # AMQP and others: the depth the broker reports, nothing read
            try:
                found[name] = channel.queue_declare(name, passive=True).message_count
            except Exception:  # noqa: BLE001 - an unknown queue holds nothing; the channel is closed after it
                found[name] = 0
                self.close()
                channel = self._channel()
        return found

    def peek(self, names: list[str], limit: int = PEEK) -> dict[str, list[Waiting]]:
        """The next ``limit`` tasks of each queue, in the order workers will take them (Redis only)."""
        channel = self._channel()
        if not self._channel_is_redis(channel):
            return {}
        return {name: self._head(channel, name, limit) for name in names}

    def _head(self, channel: Any, queue: str, limit: int) -> list[Waiting]:
        found: list[Waiting] = []
        before = 0
        client = channel.client
        for key in _compat.redis_queue_lists(channel, queue):
            if len(found) >= limit:
                break
            raw = _lrange(channel, key, -(limit - len(found)), -1)
            for offset, item in enumerate(reversed(raw)):
                task_id, name = decode(item)
                if task_id:
                    found.append(Waiting(task_id, name, queue, before + offset + 1))
            before += int(client.llen(key)) if raw else 0
        return found

    def find(self, task_id: str, names: list[str], scan: int = SCAN) -> Waiting | None:
        """Where ``task_id`` waits, reading at most ``scan`` messages per queue (Redis only)."""
        channel = self._channel()
        if not self._channel_is_redis(channel):
            return None
        needle = task_id.encode()
        client = channel.client
        for queue in names:
            before = 0
            for key in _compat.redis_queue_lists(channel, queue):
                length = int(client.llen(key))
                for start in range(0, min(length, scan), CHUNK):  # from the tail: the next to run first
                    raw = _lrange(channel, key, -(start + CHUNK), -(start + 1))
                    for offset, item in enumerate(reversed(raw)):
                        if needle in item and decode(item)[0] == task_id:
                            return Waiting(task_id, decode(item)[1], queue, before + start + offset + 1)
                before += length
        return None
