"""The monitor's thread: connect, subscribe, listen, reconcile, reconnect.

A mixin of :class:`~celerynb.tracking.monitor.TaskMonitor`, kept apart from its bookkeeping
(what is tracked, who listens, what is forgotten) so that each file has one job. It runs
on the monitor's lock and state and feeds every change to ``_apply``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from celerynb.tracking.backend_source import BATCH, GATHERED, BackendSource
from celerynb.tracking.snapshot import TaskSnapshot

logger = logging.getLogger("celerynb.monitor")

#: How long one pub/sub read may block; also the granularity of tickers.
LISTEN_TIMEOUT = 0.02
#: Unfinished ids read per reconcile sweep on Redis (pushes are the source; this is a net).
RECONCILE_SLICE = 1000
#: With one pattern subscription (private server), every this many sweeps reads a slice.
PATTERN_READ_EVERY = 10
#: Seconds with nothing unfinished and no display ticking after which the thread ends (and
#: closes its connection); the next ``track()`` or ticker starts a fresh one.
IDLE_EXIT = 5.0


class MonitorLoop:
    """The monitor thread's loop (uses the monitor's lock, state, ``_apply`` and tickers)."""

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"celerynb-monitor-{self.app.main}", daemon=True)
            self._thread.start()

    def _current(self) -> bool:
        """This thread is still the monitor's (a stop whose join timed out leaves it running)."""
        return not self._stop.is_set() and self._thread is threading.current_thread()

    def _nothing_to_do(self) -> bool:
        """Under the lock: nothing to follow; if so the thread is given up (``track`` starts another)."""
        if self._unfinished or self._tickers:
            return False
        self._thread = None
        return True

    def _run(self) -> None:
        backoff = 0.1
        while self._current():
            try:
                source = BackendSource.open(self.app)
            except Exception as exc:  # noqa: BLE001 - the server may be restarting
                logger.debug("celerynb monitor cannot connect: %s", exc)
                self._set_connected(False)
                with self._lock:
                    if self._nothing_to_do():
                        return
                self._idle(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.mode = source.mode
            self._set_connected(True)
            try:
                self._after_restart(source)
                if self._serve(source) == "idle":
                    return
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
                    self._live = False
                    self._pushed.clear()  # what was stored while disconnected must be read
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

    def _serve(self, source: BackendSource) -> str | None:
        """Follow the tracked tasks on ``source`` until stopped, moved or idle (returns "idle")."""
        url = self._url = source.url
        self._moved = False
        self._pattern = source.mode == "redis" and _private_server(self.app)
        if self._pattern:
            source.subscribe_all()
        next_sweep = time.monotonic() + (self.reconcile_interval if source.mode == "redis" else self.poll_interval)
        self._reconcile_now = False
        last_unsub = idle_since = time.monotonic()
        while self._current() and not self._moved:
            with self._lock:
                subscribe, self._to_subscribe = list(self._to_subscribe), set()
                unsubscribe = []
                # Unsubscribing is housekeeping: batch it (once a second or per 500 ids).
                if len(self._to_unsubscribe) >= 500 or time.monotonic() - last_unsub >= 1.0:
                    unsubscribe = [t for t in self._to_unsubscribe if t in self._subscribed]
                    self._to_unsubscribe = set()
                    last_unsub = time.monotonic()
            if subscribe:
                if source.mode == "redis" and not self._pattern:
                    source.subscribe(subscribe)
                    self._subscribed.update(subscribe)
                self._read(source, subscribe)
            if unsubscribe:
                source.unsubscribe(unsubscribe)
                self._subscribed.difference_update(unsubscribe)
            now = time.monotonic()
            if now >= next_sweep or self._reconcile_now:
                asked, self._reconcile_now = self._reconcile_now, False
                if self.app.conf.result_backend != url:
                    return  # the app moved to another server: reconnect there
                # With the pattern subscription nothing can be missed while connected (a lost
                # connection is followed by a full read): the read is a rare safety net.
                if asked or not self._pattern or self.stats["reconciles"] % PATTERN_READ_EVERY == 0:
                    self._read(source, self._sweep_slice(source.mode == "redis"))
                self._check_workers()
                self.stats["reconciles"] += 1
                next_sweep = now + (self.reconcile_interval if source.mode == "redis" else self.poll_interval)
            if self._unfinished or self._tickers:
                idle_since = now
            elif now - idle_since > IDLE_EXIT:
                with self._lock:
                    if self._nothing_to_do():
                        return "idle"
            if source.mode == "redis":
                self._listen(source)
            else:
                self._wake.wait(min(LISTEN_TIMEOUT * 5, max(0.0, next_sweep - time.monotonic())))
                self._wake.clear()
            self._run_tickers()

    def _sweep_slice(self, rotating: bool) -> list[str]:
        """Unfinished ids to read in this sweep: all when polling, a rotating slice on Redis."""
        with self._lock:
            ids = list(self._unfinished)
        if not rotating or len(ids) <= RECONCILE_SLICE:
            return ids
        start = self._sweep_start % len(ids)
        self._sweep_start = start + RECONCILE_SLICE
        return (ids[start:] + ids[:start])[:RECONCILE_SLICE]

    def _listen(self, source: BackendSource) -> None:
        """Apply pushed messages until the socket is quiet (or 2,000 were read).

        Subscription confirmations are skipped, not taken for "quiet": after subscribing to
        5,000 ids, the first state message must not wait for 5,000 loop turns."""
        timeout = LISTEN_TIMEOUT
        self.stats["listens"] += 1
        for _ in range(2000):
            if self._wake.is_set():
                self._wake.clear()
                timeout = 0.0
            message = source.get_message(timeout)
            if message is None:
                return
            timeout = 0.0
            tid, payload = message
            if not tid and self._pattern and not self._live and source.confirmed >= 2:
                with self._lock:
                    self._live = True  # both subscriptions of subscribe_all are in place
                continue
            if tid == GATHERED:
                self._apply_gathered(source.decode(payload))
                continue
            if payload is None or tid not in self._snapshots:
                continue  # a confirmation, or a task nobody here follows (pattern subscription)
            self.stats["messages"] += 1
            self._apply(TaskSnapshot.from_meta(tid, source.decode(payload)), payload)

    def _apply_gathered(self, documents: Any) -> None:
        """The end states a batch stored together (one JSON array): those followed here.

        Each is under ``batch_results.GATHER_MAX`` bytes, never "big" for retention: its stored
        size is not needed (given as 0)."""
        snapshots = self._snapshots
        self.stats["messages"] += 1
        for doc in documents if isinstance(documents, list) else ():
            tid = doc.get("task_id") if isinstance(doc, dict) else None
            if tid in snapshots:
                self._apply(TaskSnapshot.from_meta(tid, doc), None)

    def _read(self, source: BackendSource, task_ids: list[str]) -> None:
        for start in range(0, len(task_ids), BATCH):
            chunk = task_ids[start:start + BATCH]
            payloads = source.read(chunk)
            self.stats["mget_keys"] += len(chunk)  # counted once read: "read" means the reply is in
            for tid, payload in zip(chunk, payloads, strict=True):
                if payload is None or payload == self._payloads.get(tid):
                    continue  # absent, or unchanged since the last read: nothing to decode
                self._apply(TaskSnapshot.from_meta(tid, source.decode(payload)), payload)



def _private_server(app: Celery) -> bool:
    """The embedded server celerynb started for this session: every task on it is ours to see."""
    from celerynb.workers import urls

    return urls.source_of(app) == "embedded"


