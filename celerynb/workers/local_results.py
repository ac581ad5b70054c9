"""Results stored by this process's own workers, handed to this process's ``.get()`` directly.

With the default cluster (in-kernel workers on the kernel's own embedded server, no worker
process), a task sent from the kernel is run and stored by a thread of the kernel. Celery's
``.get()`` still subscribes to the task's channel when it is sent, reads its stored state once,
and waits for the pushed state on its own connection: three Redis exchanges, their parsing and
two thread hand-offs, all on the one GIL the kernel has. Here the pool thread that stores a
state hands the stored document to the waiting thread, and a send skips the subscription.

Correct without it too: a ``.get()`` that hears nothing reads the stored state every
:data:`READ_EVERY` seconds (a task taken by another worker after all), and one whose expectation
was dropped (more than :data:`MAX_EXPECTED` unread) or whose document is large waits as Celery
does. The PUBLISH is unchanged: displays and other clients see every state as before.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from celery.result import AsyncResult, assert_will_not_block

from celerynb import _compat

#: Tasks sent while this process serves its own results, not yet read (oldest dropped first).
MAX_EXPECTED = 10_000
#: Documents larger than this, or beyond this many bytes kept in all, are not kept here: their
#: waiter reads them from the backend.
MAX_KEPT = 64 * 1024
MAX_KEPT_TOTAL = 16 * 1024 * 1024
#: How often a waiter that heard nothing reads the stored state itself.
READ_EVERY = 1.0

_lock = threading.Lock()
_expected: OrderedDict[str, _Slot] = OrderedDict()
_served: set[int] = set()  # id() of the apps whose sends this process's workers take
_kept = 0  # bytes of the documents held in _expected


class _Slot:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: str | bytes | None = None


def serve(app: Any, on: bool) -> None:
    """Whether ``app``'s tasks sent from here are run and stored by this process's workers only."""
    global _kept
    with _lock:
        (_served.add if on else _served.discard)(id(app))
        if not _served:
            _expected.clear()
            _kept = 0


def serving(app: Any) -> bool:
    return bool(_served) and id(app) in _served


def expect(task_id: str) -> None:
    """Before sending ``task_id``: its stored end state is kept for the ``.get()`` of this process.

    A retry sends the same id again: the slot a ``.get()`` may be waiting on is kept, unless it
    holds an end state already (the id sent anew)."""
    with _lock:
        slot = _expected.get(task_id)
        if slot is not None and not slot.event.is_set():
            return
        if slot is not None:
            _drop(slot)
        _expected[task_id] = _Slot()
        if len(_expected) > MAX_EXPECTED:
            _drop(_expected.popitem(last=False)[1])


def expected(task_id: str) -> bool:
    return task_id in _expected


def forget(task_id: str) -> None:
    with _lock:
        slot = _expected.pop(task_id, None)
        if slot is not None:
            _drop(slot)


def _drop(slot: _Slot) -> None:
    global _kept
    if slot.value is not None:
        _kept -= len(slot.value)


def stored(task_id: str, value: str | bytes) -> None:
    """A worker of this process stored ``task_id``'s end state (``value``: the encoded document)."""
    global _kept
    slot = _expected.get(task_id)
    if slot is None:
        return
    with _lock:
        if slot.value is None and len(value) <= MAX_KEPT and _kept + len(value) <= MAX_KEPT_TOTAL:
            slot.value = value
            _kept += len(value)
    slot.event.set()


def wait_stored(result: Any, timeout: float | None) -> None:
    """Block until ``result``'s end state is known here (its cache then set), the timeout, or
    until only Celery's own wait can tell (returns; ``result.get()`` goes on as Celery does)."""
    slot = _expected.get(result.id)
    if slot is None:
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if slot.event.wait(READ_EVERY if left is None else min(READ_EVERY, left)):
                if slot.value is not None:
                    _compat.settle_result(result, result.backend.decode(slot.value))
                return  # a large document: Celery reads it
            if _compat.settle_result(result, result.backend.get_task_meta(result.id)):  # another worker took it
                return
    finally:
        forget(result.id)


class ServedResult(AsyncResult):
    """The result of a task sent while this process serves its own results: ``get()`` takes the
    end state from the worker thread that stored it (see the module), then is Celery's own."""

    def get(self, timeout: float | None = None, *args: Any, **kwargs: Any) -> Any:
        plain = not args and kwargs.get("on_message") is None and kwargs.get("on_interval") is None
        if plain and self._cache is None and self.parent is None and expected(self.id):
            if kwargs.get("disable_sync_subtasks", True):
                assert_will_not_block()  # Celery's "never call result.get() within a task", first
            __tracebackhide__ = True  # noqa: F841 - IPython leaves this frame out of tracebacks
            began = time.monotonic()
            try:
                wait_stored(self, timeout)
            except BaseException as exc:  # an interrupt: the note says the task keeps running
                raise _compat.noted_get_error(self, exc)  # noqa: B904
            if self._cache:
                return _compat.finish_get(self, propagate=kwargs.get("propagate", True),
                                          callback=kwargs.get("callback"))
            if timeout is not None:  # Celery raises (and says why) at once
                timeout = max(timeout - (time.monotonic() - began), 0.001)
        return super().get(timeout, *args, **kwargs)

    wait = get
