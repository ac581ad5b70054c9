"""A task's state stored on a Redis result backend in one atomic round trip.

Celery 5.7 stores a state with a GET (to leave a SUCCESS alone), then a MULTI of SET(EX) and
PUBLISH: two round trips per task, and a race. ``retry()`` sends the next attempt before its own
RETRY is stored; when that attempt succeeds in between (another worker, a busy GIL), the late
RETRY overwrites the SUCCESS and the task looks unfinished for ever. One Lua script here does
Celery's check and both commands at once. It reads only the first bytes of the stored document,
whatever its size. Servers that refuse scripts get Celery's own path, as do non-JSON backends
(the script reads JSON only).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from celery import states

from celerynb import _compat
from celerynb.workers import local_results

#: SET(EX when the TTL > 0) and PUBLISH ``ARGV[2]`` unless the stored state is SUCCESS. Celery
#: writes ``status`` first; any other layout is decoded in full.
STORE_UNLESS_SUCCEEDED = """
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
if head ~= '' then
  local status = string.match(head, '^{"status": "([^"]*)"')
  if status == nil then
    local ok, doc = pcall(cjson.decode, redis.call('GET', KEYS[1]))
    if ok and type(doc) == 'table' then status = doc['status'] end
  end
  if status == 'SUCCESS' then return 0 end
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('SETEX', KEYS[1], ttl, ARGV[2]) else redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
"""
_SHA = hashlib.sha1(STORE_UNLESS_SUCCEEDED.encode()).hexdigest()

#: Redis's largest string: Celery refuses bigger documents itself, with its own error.
_MAX_VALUE = 512 * 1024 * 1024

try:
    from redis.exceptions import NoPermissionError, NoScriptError, ResponseError
except ImportError:  # no redis-py: no Redis backend either
    NoPermissionError = NoScriptError = ResponseError = RuntimeError  # type: ignore[assignment,misc]

_scripts_refused = False


def scripts_allowed() -> bool:
    """False once a server refused a script (scripting disabled, no permission): Celery's path then."""
    return not _scripts_refused


def refuse_scripts() -> None:
    global _scripts_refused
    _scripts_refused = True


def ttl_for(backend: Any, state: str) -> int:
    """The expiry Celery's Redis backend gives a document in ``state`` (0: none)."""
    if state == states.FAILURE:
        return int(getattr(backend, "failure_expires", None) or backend.expires or 0)
    return int(backend.expires or 0)


def store_result(backend: Any, task_id: str, result: Any, state: str, traceback: str | None,
                 request: Any) -> bool:
    """Store one state as Celery's ``_store_result`` would, in one round trip; False to let Celery do it."""
    if _scripts_refused or backend.content_type != "application/json":
        return False
    meta = _compat.result_meta(backend, result, state, traceback, request)
    meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
    add_timing(meta, state, request)
    value = backend.encode(meta)
    if len(value) > _MAX_VALUE:
        return False
    args = (backend.get_key_for_task(task_id), ttl_for(backend, state), value)
    try:
        backend.ensure(_run, (backend.client, *args))
    except ResponseError as exc:  # Celery's path stores it (or raises its own error)
        if isinstance(exc, NoPermissionError) or any(w in str(exc).lower() for w in ("unknown command", "disabled")):
            refuse_scripts()
        return False
    if state in states.READY_STATES:
        local_results.stored(meta["task_id"], value)  # a .get() of this process waits for it
    return True


#: The fields :func:`add_timing` writes (a timeline reads them: ``celerynb.timeline``).
TIMING_FIELDS = ("date_started", "runtime", "slot")


def add_timing(meta: dict[str, Any], state: str, request: Any) -> None:
    """``date_started`` (epoch seconds) and ``slot`` (``pid/thread`` in its worker) on every state
    a running task stores, ``runtime`` on its end state: a display opened after the task ended
    still knows when, where and how long it ran. And ``root_id`` (Celery stores only
    ``parent_id``): rows are grouped by workflow."""
    root = getattr(request, "root_id", None)
    if root and root != meta.get("task_id"):
        meta["root_id"] = root
    began = getattr(request, "celerynb_started", None)
    if not began:
        return
    meta["date_started"] = round(began[0], 3)
    meta["slot"] = began[2]
    if state in states.READY_STATES:
        meta["runtime"] = round(time.perf_counter() - began[1], 6)


def _run(client: Any, key: str, ttl: int, value: str) -> int:
    try:
        return client.evalsha(_SHA, 1, key, ttl, value)
    except NoScriptError:
        return client.eval(STORE_UNLESS_SUCCEEDED, 1, key, ttl, value)


def install() -> None:
    """Store every task state of Redis result backends in this process this way (idempotent)."""
    _compat.route_redis_result_stores(store_result)
