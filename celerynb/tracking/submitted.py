"""The tasks published from this process, recorded by Celery's ``after_task_publish`` signal.

``TaskTable()`` with no arguments lists them; the receiver only appends to a dict.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Submitted:
    """A task published from this process: what a table shows before the worker reports anything."""

    task_id: str
    name: str | None
    argsrepr: str | None
    kwargsrepr: str | None
    sent_at: float  # time.time()
    #: How it was sent, for :func:`celerynb.retry_failed`: queue, time limits, the caller's own headers.
    options: dict[str, Any] | None = None


class SubmittedLog:
    """The last ``maxlen`` tasks published from this process, recorded by ``after_task_publish``.

    The receiver only appends to a dict (a few microseconds): submit throughput is untouched.
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self.maxlen = maxlen
        self._entries: dict[str, Submitted] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()
        self.count = 0  # total ever recorded; readers remember where they stopped

    def record(self, task_id: str, name: str | None, argsrepr: str | None, kwargsrepr: str | None,
               options: dict[str, Any] | None = None) -> None:
        entry = Submitted(task_id, name, argsrepr, kwargsrepr, time.time(), options)
        with self._lock:
            self._entries[task_id] = entry
            self._order.append(task_id)
            self.count += 1
            if len(self._order) > self.maxlen * 2:
                drop, self._order = self._order[: -self.maxlen], self._order[-self.maxlen:]
                for tid in drop:
                    self._entries.pop(tid, None)

    def get(self, task_id: str) -> Submitted | None:
        return self._entries.get(task_id)

    def since(self, count: int) -> tuple[list[str], int]:
        """Ids recorded after the reader's ``count``, and the new count to remember."""
        with self._lock:
            new = self.count - count
            ids = self._order[-new:] if new > 0 else []
            return ids[-self.maxlen:], self.count

    def ids(self) -> list[str]:
        with self._lock:
            return self._order[-self.maxlen:]


submitted = SubmittedLog()


#: Headers of Celery's task protocol 2: everything else in a message's headers is the caller's own.
PROTOCOL_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
    "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting", "stamped_headers",
    "stamps", "chord", "callbacks", "errbacks", "chain", "link", "link_error",
})


def sent_options(headers: dict[str, Any], routing_key: str | None) -> dict[str, Any]:
    """The ``apply_async`` options a message was sent with, as far as its headers tell: the queue
    (routing key), time limits and headers of the caller's own. ETA and expiry are absolute times:
    a resubmission does not repeat them."""
    options: dict[str, Any] = {}
    if routing_key:
        options["queue"] = routing_key
    hard, soft = (list(headers.get("timelimit") or ()) + [None, None])[:2]
    if hard is not None:
        options["time_limit"] = hard
    if soft is not None:
        options["soft_time_limit"] = soft
    own = {k: v for k, v in headers.items() if k not in PROTOCOL_HEADERS}
    if own:
        options["headers"] = own
    return options


def on_publish(sender: Any = None, headers: dict | None = None, body: Any = None, routing_key: str | None = None,
               **_: Any) -> None:
    headers = headers or {}
    task_id = headers.get("id")
    if task_id is None and isinstance(body, dict):  # task protocol 1
        task_id = body.get("id")
        headers = {"task": body.get("task"), "argsrepr": repr(body.get("args")), "kwargsrepr": repr(body.get("kwargs"))}
    if task_id:
        submitted.record(task_id, headers.get("task") or sender, headers.get("argsrepr"), headers.get("kwargsrepr"),
                         sent_options(headers, routing_key))


def enable_submit_log() -> None:
    """Record every task published from this process (idempotent)."""
    from celery.signals import after_task_publish

    after_task_publish.connect(on_publish, weak=False, dispatch_uid="celerynb-submit-log")
    from celerynb import _compat

    _compat.explain_result_errors(explain=explain_timeout)


def explain_timeout(backend: Any, task_id: str) -> str | None:
    """Why a result's ``get()`` timed out, when nothing knows its id (None: an ordinary timeout).

    Celery's own error is a long chain saying only that the operation timed out; an id that was
    never sent from here and that the backend has no record of is most often a mistyped one."""
    if task_id is None or submitted.get(task_id) is not None:
        return None
    try:
        if backend.get(backend.get_key_for_task(task_id)) is not None:
            return None
    except Exception:  # noqa: BLE001 - a backend that cannot say (RPC, unreachable): Celery's error
        return None
    return (f"no task {task_id!r} is known: it was not sent from this kernel and the result backend has no "
            "record of it; check the id (or wait longer, if it was sent elsewhere and is still queued).")


def disable_submit_log() -> None:
    """Stop recording published tasks (``%unload_ext celerynb``); what was recorded stays."""
    from celery.signals import after_task_publish

    after_task_publish.disconnect(on_publish, dispatch_uid="celerynb-submit-log")
