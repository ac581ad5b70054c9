"""The task monitor: one background thread per app that knows the latest state of tracked tasks.

Every display, ``results.wait``/``gather`` and ``TaskTable`` reads from it, so watching ten
thousand tasks costs one thread and a handful of Redis commands, never a loop per task.

With a Redis result backend the thread holds its own pub/sub connection: Celery PUBLISHes the
full result document on ``celery-task-meta-<id>`` for every state change (never PENDING, no
replay), so the monitor subscribes first, then reads the keys once with MGET, then only listens.
A low-rate reconcile (one MGET of every unfinished id) covers anything missed, and a lost
connection is reopened, resubscribed and reconciled. Other backends are polled in batches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, states

from celerynb.tracking.backend_source import BATCH, BackendNotObservable, BackendSource, check_observable
from celerynb.tracking.faults import FaultReactions
from celerynb.tracking.snapshot import LOST, TaskSnapshot, task_name

__all__ = ["BackendNotObservable", "TaskMonitor", "TaskSnapshot", "check_observable", "forget_monitors",
           "get_monitor", "task_name", "LOST"]

logger = logging.getLogger("celerynb.monitor")

#: Seconds between reconcile sweeps (Redis) and between polls (other backends).
RECONCILE_INTERVAL = 2.0
POLL_INTERVAL = 0.5
#: How long one pub/sub read may block; also the granularity of tickers.
_LISTEN_TIMEOUT = 0.02

Listener = Callable[["TaskSnapshot"], None]

class TaskMonitor(FaultReactions):
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
        self.stats = {"reconciles": 0, "messages": 0, "reconnects": 0, "mget_keys": 0}

    def __repr__(self) -> str:
        return f"<TaskMonitor app={self.app.main!r} tracked={len(self._snapshots)} unfinished={len(self._unfinished)}>"

    # -- public API ------------------------------------------------------------------------
    def track(self, task_ids: Iterable[str]) -> None:
        """Start following ``task_ids`` (subscribe first, then read the keys once); cheap and idempotent.

        Raises :class:`BackendNotObservable` when the app's result backend cannot be read from here.
        """
        check_observable(self.app)
        fresh = []
        origin = self.app.conf.result_backend
        with self._lock:
            for tid in task_ids:
                tid = str(tid)
                if tid in self._snapshots:
                    continue
                self._snapshots[tid] = TaskSnapshot(task_id=tid, received_at=time.monotonic())
                self._origin[tid] = origin
                self._unfinished.add(tid)
                self._to_subscribe.add(tid)
                fresh.append(tid)
        if fresh:
            if self._url is not None and self.app.conf.result_backend != self._url:
                self._moved = True  # the app was pointed at another server: reconnect now
            self._ensure_thread()
            self._wake.set()

    def seed(self, snapshot: TaskSnapshot) -> None:
        """Record a state known without the backend (an eager result); fires listeners."""
        with self._lock:
            self._snapshots.setdefault(snapshot.task_id, snapshot)
        self._apply(snapshot, None, force=True)

    def snapshot(self, task_id: str) -> TaskSnapshot:
        """The latest known state; PENDING for a task never seen (call :meth:`track` first)."""
        snap = self._snapshots.get(str(task_id))
        return snap if snap is not None else TaskSnapshot(task_id=str(task_id), received_at=time.monotonic())

    def snapshots(self, task_ids: Iterable[str]) -> list[TaskSnapshot]:
        return [self.snapshot(tid) for tid in task_ids]

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

    def wait(self, task_ids: Iterable[str], timeout: float | None = None) -> dict[str, TaskSnapshot]:
        """Block until every task is ready; returns their snapshots.

        Raises:
            TimeoutError: some tasks were still unfinished after ``timeout`` seconds.
        """
        ids = [str(t) for t in task_ids]
        self.track(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                left = [tid for tid in ids if not self._snapshots[tid].ready]
                if not left:
                    return {tid: self._snapshots[tid] for tid in ids}
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{len(left)} of {len(ids)} task(s) still unfinished after {timeout} s.")
                self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))

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
                # A late message must never turn a finished task back into a running one.
                if old.ready and not snap.ready:
                    return
                if payload is None and old.state == snap.state and old.info == snap.info:
                    return
            snap = self._count_redelivery(old, snap)
            self._snapshots[tid] = snap
            self._payloads[tid] = payload
            if snap.ready and tid in self._unfinished:
                self._unfinished.discard(tid)
                self._origin.pop(tid, None)
                self._to_unsubscribe.add(tid)
                self._changed.notify_all()
            callbacks = [self._listeners[t] for t in self._global | self._by_task.get(tid, set()) if t in self._listeners]
        for callback in callbacks:
            try:
                callback(snap)
            except Exception:  # noqa: BLE001 - one broken display must not stop the others
                logger.exception("celerynb monitor listener failed")

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

    # -- the thread ------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"celerynb-monitor-{self.app.main}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                source = BackendSource.open(self.app)
            except Exception as exc:  # noqa: BLE001 - the server may be restarting
                logger.debug("celerynb monitor cannot connect: %s", exc)
                self._set_connected(False)
                with self._lock:
                    if not self._unfinished and not self._tickers:
                        self._thread = None  # the next track() starts a fresh thread
                        return
                self._idle(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.mode = source.mode
            self._set_connected(True)
            try:
                self._after_restart(source)
                self._serve(source)
                backoff = 0.1
            except Exception as exc:  # noqa: BLE001 - connection lost: reconnect, resubscribe, reconcile
                logger.debug("celerynb monitor lost its connection: %s", exc)
                self.stats["reconnects"] += 1
                self._set_connected(False)
                self._idle(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                source.close()
                with self._lock:
                    self._to_subscribe |= self._unfinished
                    self._to_unsubscribe.clear()
                    self._subscribed.clear()

    def _set_connected(self, value: bool) -> None:
        if self.connected != value:
            self.connected = value
            self._wake_displays()

    def _wake_displays(self) -> None:
        """Run every ticker now (displays redraw their connection state)."""
        with self._lock:
            for entry in self._tickers.values():
                entry[2] = 0.0

    def _idle(self, seconds: float) -> None:
        """Back off, but wake at once when someone tracks new tasks (the server may be back)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._run_tickers()
            if self._wake.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                self._wake.clear()
                return

    def _serve(self, source: BackendSource) -> None:
        url = self._url = source.url
        self._moved = False
        next_sweep = time.monotonic() + (self.reconcile_interval if source.mode == "redis" else self.poll_interval)
        self._reconcile_now = False
        last_unsub = time.monotonic()
        while not self._stop.is_set() and not self._moved:
            with self._lock:
                subscribe, self._to_subscribe = list(self._to_subscribe), set()
                unsubscribe = []
                # Unsubscribing is housekeeping: batch it (once a second or per 500 ids).
                if len(self._to_unsubscribe) >= 500 or time.monotonic() - last_unsub >= 1.0:
                    unsubscribe = [t for t in self._to_unsubscribe if t in self._subscribed]
                    self._to_unsubscribe = set()
                    last_unsub = time.monotonic()
            if subscribe:
                if source.mode == "redis":
                    source.subscribe(subscribe)
                    self._subscribed.update(subscribe)
                self._read(source, subscribe)
            if unsubscribe:
                source.unsubscribe(unsubscribe)
                self._subscribed.difference_update(unsubscribe)
            now = time.monotonic()
            if now >= next_sweep or self._reconcile_now:
                self._reconcile_now = False
                if self.app.conf.result_backend != url:
                    return  # the app moved to another server: reconnect there
                self._read(source, list(self._unfinished))
                self._check_workers()
                self.stats["reconciles"] += 1
                next_sweep = now + (self.reconcile_interval if source.mode == "redis" else self.poll_interval)
            if source.mode == "redis":
                self._listen(source)
            else:
                self._wake.wait(min(_LISTEN_TIMEOUT * 5, max(0.0, next_sweep - time.monotonic())))
                self._wake.clear()
            self._run_tickers()

    def _listen(self, source: BackendSource) -> None:
        """Apply pushed messages until the socket is quiet (or 2,000 were read)."""
        timeout = _LISTEN_TIMEOUT
        for _ in range(2000):
            if self._wake.is_set():
                self._wake.clear()
                timeout = 0.0
            message = source.get_message(timeout)
            if message is None:
                return
            timeout = 0.0
            tid, payload = message
            self.stats["messages"] += 1
            self._apply(TaskSnapshot.from_meta(tid, source.decode(payload)), payload)

    def _read(self, source: BackendSource, task_ids: list[str]) -> None:
        for start in range(0, len(task_ids), BATCH):
            chunk = task_ids[start:start + BATCH]
            self.stats["mget_keys"] += len(chunk)
            for tid, payload in zip(chunk, source.read(chunk), strict=True):
                if payload is None or payload == self._payloads.get(tid):
                    continue  # absent, or unchanged since the last read: nothing to decode
                self._apply(TaskSnapshot.from_meta(tid, source.decode(payload)), payload)


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
