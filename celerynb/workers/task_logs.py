"""A task's captured output, stored next to its result on a Redis result backend.

One hash per task that wrote something, ``celerynb-logs-<id>`` (with the backend's global key
prefix, as the result's ``celery-task-meta-<id>``): ``t`` the text (only the last :data:`CAP`
bytes are kept), ``l`` the highest logging level seen (stderr output counts as WARNING), ``n``
every byte ever written (so a reader can say how much was dropped). It expires with the
result. A task that wrote nothing costs no write at all; one that did costs one script call per
flush (at most every :data:`FLUSH_EVERY` seconds while it runs, and one at its end).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from celerynb.workers import result_store

#: Bytes of output kept per task: the last ones.
CAP = 64 * 1024
#: Seconds between two writes of a running task's new output.
FLUSH_EVERY = 0.5
RESULT_PREFIX = "celery-task-meta-"
LOGS_PREFIX = "celerynb-logs-"

#: Append ``ARGV[1]``, keep the last ``ARGV[2]`` bytes, raise the level to ``ARGV[3]``, expire
#: in ``ARGV[4]`` seconds (0: never), all in one round trip.
APPEND_CAPPED = """
local text = (redis.call('HGET', KEYS[1], 't') or '') .. ARGV[1]
local cap = tonumber(ARGV[2])
if #text > cap then text = string.sub(text, -cap) end
local level = math.max(tonumber(redis.call('HGET', KEYS[1], 'l') or '0'), tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 't', text, 'l', level)
redis.call('HINCRBY', KEYS[1], 'n', #ARGV[1])
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""
_SHA = hashlib.sha1(APPEND_CAPPED.encode()).hexdigest()

try:
    from redis.exceptions import NoScriptError, ResponseError
except ImportError:  # no redis-py: no Redis backend either
    NoScriptError = ResponseError = RuntimeError  # type: ignore[assignment,misc]


_supported_types: dict[type, bool] = {}


def supported(backend: Any) -> bool:
    """Logs are stored on Redis result backends only (others: nothing is captured)."""
    kind = type(backend)
    known = _supported_types.get(kind)
    if known is None:
        try:
            from celery.backends.redis import RedisBackend
        except ImportError:
            known = False
        else:
            known = issubclass(kind, RedisBackend)
        _supported_types[kind] = known
    return known


def logs_key(backend: Any, task_id: str) -> str:
    """``celerynb-logs-<id>`` under the same global prefix as the task's result key."""
    key = backend.get_key_for_task(task_id)
    key = key.decode() if isinstance(key, bytes) else str(key)
    head, _, tail = key.rpartition(RESULT_PREFIX)
    return f"{head}{LOGS_PREFIX}{tail}"


def append(backend: Any, task_id: str, text: bytes, level: int, ttl: int) -> None:
    """Add ``text`` to the task's stored logs (capped, expiring in ``ttl`` s): one round trip."""
    key = logs_key(backend, task_id)
    client = backend.client
    args = (key, text, CAP, int(level), max(0, int(ttl)))
    if result_store.scripts_allowed():
        try:
            try:
                client.evalsha(_SHA, 1, *args)
            except NoScriptError:
                client.eval(APPEND_CAPPED, 1, *args)
            return
        except ResponseError as exc:
            if "unknown command" not in str(exc).lower() and "disabled" not in str(exc).lower():
                raise
            result_store.refuse_scripts()
    # No scripts on this server: the same in two round trips (one writer per task, so no race).
    old, old_level = client.hmget(key, "t", "l")
    merged = ((old or b"") + text)[-CAP:]
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"t": merged, "l": max(int(old_level or 0), int(level))})
        pipe.hincrby(key, "n", len(text))
        if ttl > 0:
            pipe.expire(key, int(ttl))
        pipe.execute()


@dataclass(frozen=True)
class StoredLogs:
    """What is stored for one task: its text (the last :data:`CAP` bytes), level, bytes written."""

    task_id: str
    text: str = ""
    level: int = 0
    written: int = 0

    @property
    def dropped(self) -> int:
        """Bytes written that are no longer kept (the cap keeps the last ones)."""
        return max(0, self.written - len(self.text.encode("utf-8", "replace")))

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @property
    def marker(self) -> str:
        """``danger`` if an ERROR (or worse) was logged, ``warning`` for a WARNING or stderr output."""
        if self.level >= logging.ERROR:
            return "danger"
        return "warning" if self.level >= logging.WARNING else ""


def _decode(task_id: str, text: bytes | None, level: Any, written: Any) -> StoredLogs:
    raw = text or b""
    decoded = raw.decode("utf-8", "replace")
    if written and int(written) > len(raw) and "\n" in decoded:
        decoded = decoded.split("\n", 1)[1]  # the cap cut the first line: drop what is left of it
    return StoredLogs(task_id, decoded, int(level or 0), int(written or 0))


def read(backend: Any, task_ids: list[str]) -> dict[str, StoredLogs]:
    """The stored logs of ``task_ids`` (one pipelined round trip); absent ids: nothing written."""
    if not task_ids or not supported(backend):
        return {}
    with backend.client.pipeline(transaction=False) as pipe:
        for tid in task_ids:
            pipe.hmget(logs_key(backend, tid), "t", "l", "n")
        values = pipe.execute()
    return {tid: _decode(tid, *value) for tid, value in zip(task_ids, values, strict=True) if value[2] is not None}


def read_sizes(backend: Any, task_ids: list[str]) -> dict[str, tuple[int, int]]:
    """``(bytes written, level)`` per id that wrote something: what a live table checks before
    reading texts again (cheap: no text crosses the wire)."""
    if not task_ids or not supported(backend):
        return {}
    with backend.client.pipeline(transaction=False) as pipe:
        for tid in task_ids:
            pipe.hmget(logs_key(backend, tid), "n", "l")
        values = pipe.execute()
    return {tid: (int(n), int(lv or 0)) for tid, (n, lv) in zip(task_ids, values, strict=True) if n is not None}
