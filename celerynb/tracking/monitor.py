"""The task monitor: one background thread per app that knows the latest state of tracked tasks.

Every display, ``results.wait``/``gather`` and ``TaskTable`` reads from it, so watching ten
thousand tasks costs one thread and a handful of Redis commands, never a loop per task.

With a Redis result backend the thread holds its own pub/sub connection: Celery PUBLISHes the
full result document on ``celery-task-meta-<id>`` for every state change (never PENDING, no
replay), so the monitor subscribes first, then reads the keys once with MGET, then only listens.
On celerynb's embedded server (private to this session) one pattern subscription covers every
task; elsewhere each tracked id is subscribed, in batches. A low-rate reconcile (one MGET of a
rotating slice of unfinished ids) covers anything missed, and a lost connection is reopened,
resubscribed and reconciled in full. Other backends are polled in batches.

Every update costs O(1): waiters and displays keep their own counts, and finished tasks are
forgotten once nothing needs them (:mod:`celerynb.tracking.retention`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, states

from celerynb.tracking.backend_source import BackendNotObservable, BackendSource, check_observable
from celerynb.tracking.faults import FaultReactions
from celerynb.tracking.loop import MonitorLoop
from celerynb.tracking.retention import FinishedTasks
from celerynb.tracking.snapshot import LOST, TaskSnapshot, task_name

__all__ = ["BackendNotObservable", "TaskMonitor", "TaskSnapshot", "check_observable", "forget_monitors",
           "get_monitor", "task_name", "LOST"]

logger = logging.getLogger("celerynb.monitor")

#: Seconds between reconcile sweeps (Redis) and between polls (other backends).
RECONCILE_INTERVAL = 2.0
POLL_INTERVAL = 0.5
#: At most this many states are read by :meth:`TaskMonitor.read_now` (one MGET per 1,000 ids).
READ_NOW_MAX = 2000

Listener = Callable[["TaskSnapshot"], None]

class TaskMonitor(MonitorLoop, FaultReactions):
    """Latest state of tracked tasks, kept fresh by one daemon thread.

    Use :func:`get_monitor` rather than building one: there is one per app per process.
    """

    def __init__(self, app: Celery, reconcile_interval: float = RECONCILE_INTERVAL,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.app = app
        self.reconcile_interval = reconcile_interval
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._snapshots: dict[str, TaskSnapshot] = {}
        self._payloads: dict[str, bytes | None] = {}
        self._unfinished: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._subscribed: set[str] = set()
        self._listeners: dict[int, Listener] = {}
        self._by_task: dict[str, set[int]] = {}
        self._global: set[int] = set()
        self._tickers: dict[int, list[Any]] = {}
        self._next_token = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._reconcile_now = False
        self._moved = False
        #: The result backend each task was tracked on: after the app moves to another server
        #: (a new cluster), unfinished tasks of the old one can never be followed again.
        self._origin: dict[str, str] = {}
        self._url: str | None = None
        self.mode: str | None = None  # "redis" or "poll", known once the thread connected
        #: False while the result backend cannot be reached (displays say "disconnected").
        self.connected = True
        self._server_run: tuple[str, str] | None = None  # (backend URL, server run id)
        self._workers_of: dict[str, tuple[Any, Any]] = {}
        self._finished = FinishedTasks()
        self._sizes: dict[str, int] = {}  # stored size of finished tasks still pinned
        self._waiting: Counter[str] = Counter()  # ids some wait() needs kept
        self._pattern = False  # one pattern subscription covers every task (private server)
        self._live = False  # ...and the server confirmed it: whatever is stored from now on is heard
        self._pushed: set[str] = set()  # unfinished tasks tracked unsent while live: never worth a read
        self._sweep_start = 0
        self.stats = {"reconciles": 0, "messages": 0, "reconnects": 0, "mget_keys": 0, "forgotten": 0, "listens": 0}

    def __repr__(self) -> str:
        return f"<TaskMonitor app={self.app.main!r} tracked={len(self._snapshots)} unfinished={len(self._unfinished)}>"

    # -- public API ------------------------------------------------------------------------
    def track(self, task_ids: Iterable[str], unsent: bool = False) -> None:
        """Start following ``task_ids`` (subscribe first, then read the keys once); cheap and idempotent.

        ``unsent``: the tasks are not sent yet (``celerynb.map`` tracks a batch before publishing
        it). While the pattern subscription of a private server is confirmed, every state they
        store is then pushed here: their keys are not read (on a map of small calls, reading
        and decoding the states stored before a late ``track`` was the monitor's main cost).

        Raises :class:`BackendNotObservable` when the app's result backend cannot be read from here.
        """
        check_observable(self.app)
        fresh = []
        origin = self.app.conf.result_backend
        with self._lock:
            heard = unsent and self._live
            for tid in task_ids:
                tid = str(tid)
                if tid in self._snapshots:
                    continue
                self._snapshots[tid] = TaskSnapshot(task_id=tid, received_at=time.monotonic())
                self._origin[tid] = origin
                self._unfinished.add(tid)
                if heard:
                    self._pushed.add(tid)
                else:
                    self._to_subscribe.add(tid)
                fresh.append(tid)
        if fresh:
            if self._url is not None and self.app.conf.result_backend != self._url:
                self._moved = True  # the app was pointed at another server: reconnect now
            self._ensure_thread()
            if not heard:
                self._wake.set()

    def untrack(self, task_ids: Iterable[str]) -> None:
        """Stop following tasks that were tracked ``unsent`` and then never sent (a failed publish)."""
        with self._lock:
            for tid in task_ids:
                snap = self._snapshots.get(tid)
                if snap is None or snap.state != states.PENDING or self._pinned(tid):
                    continue
                del self._snapshots[tid]
                for known in (self._unfinished, self._to_subscribe, self._pushed):
                    known.discard(tid)
                self._origin.pop(tid, None)

    def read_now(self, task_ids: Iterable[str], limit: int = READ_NOW_MAX) -> None:
        """Read the stored states of tracked ``task_ids`` still PENDING here, from the calling
        thread: a display's first picture then shows tasks that already ended as ended (the
        monitor's own first read comes a moment later, from its thread)."""
        with self._lock:
            # Tasks tracked before they were sent, while every state stored is pushed here,
            # have nothing stored that was not heard (20,000 of a map: ~60 ms of decoding saved).
            pushed = self._pushed if self._live else ()
            ids = [t for t in task_ids if (s := self._snapshots.get(t)) is not None and s.state == states.PENDING
                   and t not in pushed]
        if not ids:
            return
        try:
            self._read(BackendSource(self.app), ids[:limit])
        except Exception:  # noqa: BLE001 - the monitor's own read follows; a picture must not fail
            logger.debug("celerynb: could not read %d state(s) before drawing", len(ids), exc_info=True)

    def seed(self, snapshot: TaskSnapshot) -> None:
        """Record a state known without the backend (an eager result); fires listeners."""
        with self._lock:
            self._snapshots.setdefault(snapshot.task_id, TaskSnapshot(task_id=snapshot.task_id))
        self._apply(snapshot, None, force=True)

    def snapshot(self, task_id: str) -> TaskSnapshot:
        """The latest known state; PENDING for a task never seen (call :meth:`track` first)."""
        snap = self._snapshots.get(str(task_id))
        return snap if snap is not None else TaskSnapshot(task_id=str(task_id), received_at=time.monotonic())

    def snapshots(self, task_ids: Iterable[str]) -> list[TaskSnapshot]:
        return [self.snapshot(tid) for tid in task_ids]

    def full_snapshot(self, task_id: str) -> TaskSnapshot:
        """Like :meth:`snapshot`, with the result read again from the backend if it was forgotten
        or trimmed (see :mod:`celerynb.tracking.retention`): for results, not for redraws."""
        snap = self._snapshots.get(str(task_id))
        if snap is not None and not snap.trimmed:
            return snap
        meta = self.app.backend.get_task_meta(str(task_id))
        if not meta or meta.get("status") == "PENDING":
            return snap if snap is not None else TaskSnapshot(task_id=str(task_id), received_at=time.monotonic())
        return TaskSnapshot.from_meta(str(task_id), meta)

    def listening(self, task_id: str) -> bool:
        """Whether a pushed state of ``task_id`` reaches this monitor now (subscribed)."""
        return self._pattern or str(task_id) in self._subscribed

    def add_listener(self, callback: Listener, task_ids: Iterable[str] | None = None) -> Callable[[], None]:
        """Call ``callback(snapshot)`` from the monitor thread on every change of ``task_ids`` (all if None).

        Returns a function that removes the listener. Callbacks must be quick and must not raise.
        """
        with self._lock:
            token = self._next_token = self._next_token + 1
            self._listeners[token] = callback
            ids = None if task_ids is None else [str(t) for t in task_ids]
            if ids is None:
                self._global.add(token)
            else:
                for tid in ids:
                    self._by_task.setdefault(tid, set()).add(token)

        def remove() -> None:
            with self._lock:
                self._listeners.pop(token, None)
                self._global.discard(token)
                for tid in ids or ():
                    tokens = self._by_task.get(tid)
                    if tokens is not None:
                        tokens.discard(token)
                        if not tokens:
                            del self._by_task[tid]
                            self._release(tid)

        return remove

    def add_ticker(self, callback: Callable[[], None], interval: float = 0.1) -> Callable[[], None]:
        """Call ``callback()`` from the monitor thread about every ``interval`` s (display refresh)."""
        with self._lock:
            token = self._next_token = self._next_token + 1
            self._tickers[token] = [callback, interval, time.monotonic() + interval]
        self._ensure_thread()

        def remove() -> None:
            with self._lock:
                self._tickers.pop(token, None)

        return remove

    def wait(self, task_ids: Iterable[str], timeout: float | None = None,
             until_failure: bool = False) -> dict[str, TaskSnapshot]:
        """Block until every task is ready; returns their snapshots.

        With ``until_failure``, return as soon as the first task (in order) that did not succeed
        is ready, with the snapshots up to it: what ``GroupResult.join`` raises on.

        Raises:
            TimeoutError: some tasks were still unfinished after ``timeout`` seconds.
        """
        ids = [str(t) for t in task_ids]
        with self._lock:
            self._waiting.update(ids)  # pinned: nothing is forgotten before this returns
        try:
            self.track(ids)
            deadline = None if timeout is None else time.monotonic() + timeout
            found: dict[str, TaskSnapshot] = {}
            position = 0  # ids before it are ready: each wake-up checks only what may have changed
            with self._changed:
                while True:
                    while position < len(ids):
                        snap = self._snapshots.get(ids[position])
                        if snap is None or not snap.ready:
                            break
                        found[ids[position]] = snap
                        position += 1
                        if until_failure and snap.state != states.SUCCESS:
                            return dict(found)
                    if position == len(ids):
                        return {tid: self._snapshots.get(tid, found[tid]) for tid in ids}
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        left = sum(1 for tid in ids[position:] if not self._snapshots[tid].ready)
                        raise TimeoutError(f"{left} of {len(ids)} task(s) still unfinished after {timeout} s.")
                    self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))
        finally:
            with self._lock:
                self._waiting.subtract(ids)
                for tid in ids:
                    if self._waiting.get(tid, 1) <= 0:
                        del self._waiting[tid]
                        self._release(tid)

    def reconcile(self) -> None:
        """Ask the thread for a sweep now (after a reconnect it does one by itself)."""
        self._reconcile_now = True
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (tests, interpreter exit); tracked state is kept."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    # -- state changes ---------------------------------------------------------------------
    def _apply(self, snap: TaskSnapshot, payload: bytes | None, force: bool = False) -> None:
        tid = snap.task_id
        with self._lock:
            old = self._snapshots.get(tid)
            if old is None:  # no longer tracked
                return
            if not force:
                if payload is not None and self._payloads.get(tid) == payload:
                    return
                # A late message must never turn a finished task back into a running one, nor
                # report its end twice.
                if old.ready and (not snap.ready or old.state != LOST):
                    return
                if payload is None and old.state == snap.state and old.info == snap.info:
                    return
            snap = self._count_redelivery(old, snap)
            self._snapshots[tid] = snap
            if not snap.ready:
                self._payloads[tid] = payload
            elif not old.ready:
                self._finish(snap, len(payload) if payload else 0)
            callbacks = [self._listeners[t] for t in self._global | self._by_task.get(tid, set()) if t in self._listeners]
        for callback in callbacks:
            try:
                callback(snap)
            except Exception:  # noqa: BLE001 - one broken display must not stop the others
                logger.exception("celerynb monitor listener failed")

    def _finish(self, snap: TaskSnapshot, size: int) -> None:
        """Bookkeeping of a task that just ended (under the lock)."""
        tid = snap.task_id
        self._unfinished.discard(tid)
        self._pushed.discard(tid)
        self._origin.pop(tid, None)
        self._payloads.pop(tid, None)
        self._workers_of.pop(tid, None)
        if not self._pattern:
            self._to_unsubscribe.add(tid)
        pinned = self._pinned(tid)
        if pinned:
            self._sizes[tid] = size
        kept = self._finished.finished(snap, size, pinned)
        if kept is not snap:
            self._snapshots[tid] = kept
        self._finished.evict(self._pinned, self._forget)
        self._changed.notify_all()

    def _pinned(self, task_id: str) -> bool:
        return task_id in self._by_task or task_id in self._waiting

    def _release(self, task_id: str) -> None:
        """Nothing pins ``task_id`` any more (under the lock): a finished task may be forgotten."""
        snap = self._snapshots.get(task_id)
        if snap is None or not snap.ready or task_id in self._unfinished or self._pinned(task_id):
            return
        kept = self._finished.released(snap, self._sizes.pop(task_id, 0))
        if kept is not snap:
            self._snapshots[task_id] = kept
        self._finished.evict(self._pinned, self._forget)

    def _forget(self, task_id: str) -> None:
        self._snapshots.pop(task_id, None)
        self._payloads.pop(task_id, None)
        self._sizes.pop(task_id, None)
        self.stats["forgotten"] += 1

    def _count_redelivery(self, old: TaskSnapshot, snap: TaskSnapshot) -> TaskSnapshot:
        """A second STARTED from another worker process (not after a RETRY) is a redelivery,
        e.g. after a worker crash with ``acks_late``: count it so displays can show it."""
        count = old.redeliveries
        if snap.state == states.STARTED and isinstance(snap.info, dict):
            who = (snap.info.get("hostname"), snap.info.get("pid"))
            before = self._workers_of.get(snap.task_id)
            self._workers_of[snap.task_id] = who
            if before is not None and before != who and old.state != states.RETRY:
                count += 1
            elif snap.info.get("redelivered") and count == 0:  # the first run was not seen here
                count = 1
        elif snap.ready:
            self._workers_of.pop(snap.task_id, None)
        if count != snap.redeliveries:
            from dataclasses import replace

            snap = replace(snap, redeliveries=count)
        return snap

    def _run_tickers(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [entry for entry in self._tickers.values() if entry[2] <= now]
            for entry in due:
                entry[2] = now + entry[1]
        for entry in due:
            try:
                entry[0]()
            except Exception:  # noqa: BLE001
                logger.exception("celerynb monitor ticker failed")

_monitors: dict[int, TaskMonitor] = {}
_registry_lock = threading.Lock()


def get_monitor(app: Celery | None = None) -> TaskMonitor:
    """The monitor of ``app`` (celerynb's app by default): one per app per process."""
    if app is None:
        from celerynb.cluster.apps import current_app

        app = current_app()
    with _registry_lock:
        monitor = _monitors.get(id(app))
        if monitor is None or monitor.app is not app or monitor._pid != os.getpid():
            monitor = _monitors[id(app)] = TaskMonitor(app)
        return monitor


def forget_monitors() -> None:
    """Stop and drop every monitor (tests)."""
    with _registry_lock:
        monitors = list(_monitors.values())
        _monitors.clear()
    for monitor in monitors:
        monitor.stop()
