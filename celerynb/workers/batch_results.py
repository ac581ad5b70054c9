"""How a batch stores its items' results: Celery's document per item, a pipeline per group.

Each item's document is the one Celery's backend stores (``_compat.result_meta`` builds the
first of a batch; the others reuse its shape), SET with the backend's expiry and PUBLISHed on
the key's channel (Celery's ``.get()`` and the monitor follow those), a group of items per round
trip: one Lua script call doing exactly those commands, or a pipeline of them where the server
refuses scripts.

Gathered: while someone listens on :func:`gathered_channel` (the monitor on celerynb's private
server, whose pattern subscription would otherwise hear every item's PUBLISH), the script
PUBLISHes a group's documents once there, as one JSON array, and per key only where that key's
channel has a subscriber of its own (``PUBSUB NUMSUB``: a Celery ``.get()``). One message to
parse and decode per group instead of one per item: the monitor's cost per item on a map of
small calls, measured at about a third of the kernel's CPU. A document over
:data:`GATHER_MAX` bytes is still PUBLISHed on its own channel. A background
thread stores what waited ``FLUSH_EVERY`` seconds even while the next item runs, so a long
item after short ones does not hold their results back (nor lose them if its worker dies).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, states

from celerynb import _compat
from celerynb.workers import result_store

#: Results are stored at most ``FLUSH_EVERY`` seconds after the item ends, or every
#: ``FLUSH_SIZE`` items.
FLUSH_EVERY = 0.01
FLUSH_SIZE = 256
#: Documents up to this size go in the gathered message (always under the monitor's
#: ``retention.BIG_RESULT``: it keeps them without knowing their stored size).
GATHER_MAX = 64 * 1024


#: ``id(app)`` -> (perf_counter, ``app.now().isoformat()``) last computed (see ``ResultBuffer._now``).
_clock: dict[int, tuple[float, str]] = {}


def gathered_channel(backend: Any) -> bytes:
    """The channel a batch's stored documents are PUBLISHed on together (see the module).

    Named after the backend's key prefix (bytes, a ``global_keyprefix`` included) but not
    starting with it: a pattern subscription to the result keys' channels does not hear it."""
    return b"celerynb-gathered:" + backend.get_key_for_task("x")[:-1]


def document_encoder(backend: Any) -> Callable[[dict[str, Any]], str | bytes]:
    """``backend.encode``, without kombu's serializer registry around each call where what it
    would run is kombu's own JSON encoder: the same text at half the cost (~5 of ~10 us an item)."""
    return _compat.plain_json_encoder(backend) or backend.encode


class ResultBuffer:
    """The encoded results of one batch not yet stored (Redis result backends)."""

    def __init__(self, app: Celery, backend: Any) -> None:
        self.app, self.backend = app, backend
        self.keys: dict[str, str] = {}
        self.template: dict[str, Any] | None = None
        self.pending: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()
        # Only JSON documents concatenate into one JSON array.
        self.channel = gathered_channel(backend) if backend.content_type == "application/json" else b""
        self.encode = document_encoder(backend)
        self.last_flush = time.perf_counter()

    def size(self) -> int:
        return len(self.pending)

    def add(self, context: Any, state: str, result: Any, traceback: str | None) -> None:
        """Queue one item's outcome, encoded as Celery's backend would store it."""
        backend = self.backend
        encoded = backend.encode_result(result, state)
        template = self.template
        if template is None or context.children:
            # Celery's own document for this item; later items reuse its shape (same request
            # fields but id and arguments; children, if any, make an item compute its own).
            meta = _compat.result_meta(backend, encoded, state, traceback, context)
            if not context.children:
                self.template = meta
        else:
            meta = dict(template)
            meta.update(status=state, result=encoded, traceback=traceback,
                        date_done=self._now() if state in states.READY_STATES else None)
            if "args" in meta:  # result_extended
                meta.update(args=context.args, kwargs=context.kwargs)
        meta["task_id"] = context.id
        if getattr(context, "celerynb_started", None):
            result_store.add_timing(meta, state, context)
        elif "date_started" in meta:  # copied from the template: not this item's (it never ran)
            for name in result_store.TIMING_FIELDS:
                meta.pop(name, None)
        key = self.keys.get(context.id) or backend.get_key_for_task(context.id)
        entry = (key, state, self.encode(meta))
        with self.lock:
            self.pending.append(entry)

    def _now(self) -> str:
        """``date_done`` as Celery writes it (``app.now()``), computed at most once a millisecond
        per app in this process, for every batch running at once (~20 us each time)."""
        now = time.perf_counter()
        at, text = _clock.get(id(self.app), (-1.0, ""))
        if now - at >= 0.001:
            text = self.app.now().isoformat()
            _clock[id(self.app)] = (now, text)
        return text

    def flush(self) -> None:
        """One pipeline: SET (with the backend's expiry) and PUBLISH of every queued result."""
        with self.lock:
            pending, self.pending = self.pending, []
            self.last_flush = time.perf_counter()
        if pending:
            self.backend.ensure(self._write, (pending,))

    def flush_if_due(self) -> None:
        """From the flusher thread: what waited ``FLUSH_EVERY`` is stored now."""
        with self.lock:
            if not self.pending or time.perf_counter() - self.last_flush < FLUSH_EVERY:
                return
            pending, self.pending = self.pending, []
            self.last_flush = time.perf_counter()
        try:
            self._write(pending)
        except Exception:  # noqa: BLE001 - the runner's own flush retries them
            with self.lock:
                self.pending[:0] = pending

    def _write(self, pending: list[tuple[str, str, Any]]) -> None:
        backend = self.backend
        expires = int(backend.expires or 0)
        failure_expires = int(getattr(backend, "failure_expires", None) or expires)
        client = backend.client
        if result_store.scripts_allowed():
            # One EVALSHA doing the same SET(EX) + PUBLISH per result: a pipeline of two commands
            # per item costs the client ~16 us of CPU per item to pack and parse, this ~4 us.
            keys, args = [key for key, _, _ in pending], list[Any]()
            gather = bool(self.channel)
            for _, state, value in pending:
                args += (failure_expires if state == states.FAILURE else expires, value,
                         1 if gather and len(value) <= GATHER_MAX else 0)
            args.append(self.channel)
            try:
                try:
                    client.evalsha(_SHA, len(keys), *keys, *args)
                except _NoScriptError:
                    client.eval(_SET_AND_PUBLISH, len(keys), *keys, *args)
                return
            except _ResponseError:  # scripting disabled on this server: the pipeline, from now on
                result_store.refuse_scripts()
        with client.pipeline(transaction=False) as pipe:
            for key, state, value in pending:
                ttl = failure_expires if state == states.FAILURE else expires
                if ttl:
                    pipe.setex(key, ttl, value)
                else:
                    pipe.set(key, value)
                pipe.publish(key, value)
            pipe.execute()


#: SET (with expiry when > 0) then PUBLISH on the key's channel, per result: what Celery's
#: ``RedisBackend.set`` pipelines for one result. ARGV: (ttl, document, may gather) per key,
#: then the gathered channel (empty: none). While that channel has a subscriber, documents that
#: may be gathered are PUBLISHed there as one JSON array, and on their own channel only when it
#: has a subscriber of its own.
_SET_AND_PUBLISH = """
local channel = ARGV[#ARGV]
local gather = channel ~= '' and redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0
local gathered = {}
for i, key in ipairs(KEYS) do
  local ttl, value = tonumber(ARGV[3 * i - 2]), ARGV[3 * i - 1]
  if ttl > 0 then redis.call('SETEX', key, ttl, value) else redis.call('SET', key, value) end
  if gather and ARGV[3 * i] == '1' then
    gathered[#gathered + 1] = value
    if redis.call('PUBSUB', 'NUMSUB', key)[2] > 0 then redis.call('PUBLISH', key, value) end
  else
    redis.call('PUBLISH', key, value)
  end
end
if #gathered > 0 then redis.call('PUBLISH', channel, '[' .. table.concat(gathered, ',') .. ']') end
return #KEYS
"""
_SHA = hashlib.sha1(_SET_AND_PUBLISH.encode()).hexdigest()

_NoScriptError, _ResponseError = result_store.NoScriptError, result_store.ResponseError


class Flusher:
    """A daemon thread storing what buffers held for ``FLUSH_EVERY``; it runs only while some
    batch runs in this process (and is started anew in a forked child)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffers: set[ResultBuffer] = set()
        self.thread: threading.Thread | None = None
        self.pid: int | None = None

    def add(self, buffer: ResultBuffer) -> None:
        with self.lock:
            self.buffers.add(buffer)
            if self.thread is None or self.pid != os.getpid():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, name="celerynb-batch-flusher", daemon=True)
                self.thread.start()

    def discard(self, buffer: ResultBuffer) -> None:
        with self.lock:
            self.buffers.discard(buffer)

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            time.sleep(FLUSH_EVERY / 2)
            with self.lock:
                if self.thread is not me:
                    return
                buffers = list(self.buffers)
                if not buffers:
                    self.thread = None
                    return
            for buffer in buffers:
                buffer.flush_if_due()


flusher = Flusher()
