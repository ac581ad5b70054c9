"""kombu's and redis-py's internals celerynb reaches for (checked on kombu 5.7.0, redis-py 8.1.0)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# -- kombu: batch publishing and the Redis channel ---------------------------------------------------


def supports_batch_publish(producer: Any) -> bool:
    """Whether ``producer.batch()`` pipelines messages: ``Producer.supports_batch_publish`` (kombu 5.7.0;
    absent before, where every message is published on its own)."""
    return bool(getattr(producer, "supports_batch_publish", False))


def reuse_redis_clients() -> None:
    """One ``redis.Redis`` per kombu Redis channel and pool: ``Channel.conn_or_acquire`` (kombu 5.7.0)
    builds one per publish, delivery and ack (~70 us each: redis-py 8's ~170 response callbacks),
    though a client is only a handle on the pool. Idempotent; the async (pub/sub) client is untouched."""
    from kombu.transport import redis as kombu_redis

    channel_cls = kombu_redis.Channel
    if getattr(channel_cls._create_client, "_celerynb_reuses", False):
        return
    original = channel_cls._create_client

    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return original(self, asynchronous)
        cached = self.__dict__.get("_celerynb_client")
        pool = self.pool
        if cached is None or cached[0] is not pool:
            cached = self.__dict__["_celerynb_client"] = (pool, original(self, False))
        return cached[1]

    _create_client._celerynb_reuses = True  # type: ignore[attr-defined]
    channel_cls._create_client = _create_client  # type: ignore[method-assign]


_REDIS_CHANNEL_ATTRIBUTES = ("_put", "_q_for_pri", "_get_message_priority", "_expires", "conn_or_acquire")


def is_redis_channel(channel: Any) -> bool:
    """kombu's Redis transport channel, with the internals :func:`caught_puts` and friends use (5.7.0)."""
    return all(hasattr(channel, name) for name in _REDIS_CHANNEL_ATTRIBUTES)


@contextmanager
def caught_puts(channel: Any) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Catch what kombu's Redis ``Channel._put(queue, message)`` would LPUSH, instead of sending it (5.7.0)."""
    caught: list[tuple[str, dict[str, Any]]] = []
    channel._put = lambda queue, message, **_: caught.append((queue, message))
    try:
        yield caught
    finally:
        del channel._put


def put(channel: Any, queue: str, message: dict[str, Any]) -> None:
    """Push one message as kombu would: ``Channel._put`` (kombu 5.7.0)."""
    channel._put(queue, message)


def queue_expires(channel: Any, queue: str) -> bool:
    """Whether kombu adds a PEXPIRE per message to ``queue``: ``Channel._expires`` (kombu 5.7.0)."""
    return queue in channel._expires


def redis_list_key(channel: Any, queue: str, message: dict[str, Any]) -> str:
    """The Redis list of ``queue`` for a message: ``Channel._q_for_pri``/``_get_message_priority`` (kombu 5.7.0)."""
    return channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))


def json_codec_is(dumps: Callable[..., str]) -> bool:
    """Whether kombu's registered JSON encoder is ``dumps``: ``SerializerRegistry._encoders`` (kombu 5.7.0)."""
    from kombu.serialization import registry

    return registry._encoders["json"][2] is dumps


def plain_json_encoder(backend: Any) -> Callable[[Any], str] | None:
    """What ``backend.encode(document)`` runs when that is kombu's own JSON, as one callable:
    ``Backend.encode`` -> ``Backend._encode`` -> ``kombu.serialization.dumps`` -> the registered
    ``kombu.utils.json.dumps`` -> ``JSONEncoder().encode`` (celery 5.7.0, kombu 5.7.0). None when
    the backend's serializer, its encode methods or the registered JSON codec are others."""
    from celery.backends.base import Backend
    from kombu.utils.json import JSONEncoder, dumps

    cls = type(backend)
    if (getattr(backend, "serializer", None) == "json" and json_codec_is(dumps)
            and cls.encode is Backend.encode and cls._encode is Backend._encode):
        return JSONEncoder().encode
    return None


# -- kombu: messages a dead worker held ------------------------------------------------------------


def unacked_messages(channel: Any) -> dict[str, dict[str, Any]]:
    """Delivered, unacknowledged messages of kombu's Redis transport by delivery tag: the ``unacked`` hash
    (``Channel.unacked_key``, 5.7.0) of ``[message, exchange, routing_key]``; kombu restores them only late."""
    import json

    raw = channel.client.hgetall(channel.unacked_key)
    found = {}
    for tag, value in raw.items():
        try:
            message = json.loads(value)[0]
        except (ValueError, TypeError, IndexError):
            continue
        found[tag.decode() if isinstance(tag, bytes) else str(tag)] = message
    return found


def restore_unacked(channel: Any, tag: str) -> None:
    """Put one unacknowledged message back on its queue now: ``QoS.restore_by_tag`` (kombu 5.7.0)."""
    channel.qos.restore_by_tag(tag)


def reserved_request_ids() -> list[str]:
    """Ids of tasks this process's workers received but did not start: ``celery.worker.state.reserved_requests`` (5.7.0)."""
    from celery.worker import state

    return [request.id for request in list(state.reserved_requests)]




# -- kombu: reading a Redis queue without consuming it (the cluster monitor) ------------------------


def redis_queue_lists(channel: Any, queue: str) -> list[str]:
    """The Redis lists that hold ``queue``, in the order a worker takes from them: ``Channel._q_for_pri``
    over ``Channel.priority_steps`` (kombu 5.7.0; a worker BRPOPs the same lists in this order). Without
    the transport's ``global_keyprefix``, which kombu's client adds to LLEN but not to LRANGE."""
    return list(dict.fromkeys(channel._q_for_pri(queue, pri) for pri in channel.priority_steps))


def redis_bound_queues(channel: Any, max_keys: int = 100_000) -> list[str]:
    """Queues declared on kombu's Redis transport, consumed or not: the members of its
    ``_kombu.binding.<exchange>`` sets (``Channel.keyprefix_queue``, entries joined by ``Channel.sep``,
    kombu 5.7.0). A client that sent to a queue declared it, so a queue no worker reads is found too.
    SCAN reads at most ``max_keys`` keys (SCAN and its pattern are not prefixed by kombu's client)."""
    import fnmatch

    prefix = getattr(channel, "global_keyprefix", "") or ""
    client = channel.client
    pattern = "".join(f"[{c}]" if c in "*?[]\\" else c for c in prefix) + channel.keyprefix_queue % ("*",)
    found: dict[str, None] = {}
    cursor, read = 0, 0
    while True:
        cursor, keys = client.scan(cursor=cursor, match=pattern, count=1000)
        read += 1000
        for key in keys:
            name = key.decode() if isinstance(key, bytes) else str(key)
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            for member in client.smembers(name[len(prefix):]):  # SMEMBERS is prefixed by kombu's client
                entry = member.decode() if isinstance(member, bytes) else str(member)
                found[entry.split(channel.sep)[-1]] = None
        if not cursor or read >= max_keys:
            return list(found)
