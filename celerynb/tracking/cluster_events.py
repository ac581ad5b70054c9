"""Every task and worker of a cluster, from Celery's events, queues and result backend.

One daemon thread holds an ``app.events.Receiver`` (its own auto-deleted queue bound to the
``celeryev`` exchange, as ``celery events`` and Flower do) and feeds Celery's own model,
:class:`celery.events.state.State`, bounded to the latest ``max_tasks`` tasks; counters by
event type cover all of them. Between events the same thread reads, at most every ``poll``
seconds, the queues' depths and the tasks waiting at their head (Redis: without consuming; see
:mod:`celerynb.tracking.broker_queues`), and asks the workers for their pool and concurrency
(``inspect stats``, every ``STATS_EVERY`` s; once, at start, what they run and hold:
``inspect active`` / ``reserved``, the events of which came before the monitor). Queues are the
app's, the workers', those events name and, on Redis, every queue the broker knows (kombu's
bindings, every ``DECLARED_EVERY`` s). Running tasks are followed in the result backend through
the shared task monitor, for the PROGRESS meta that events do not carry (and names events missed).

Tasks are seen whoever sent them: a client with ``task_send_sent_event`` (celerynb's app) says
``task-sent``; any other client's task is seen waiting in a Redis queue, then ``task-received``
from the worker that took it (workers need task events: ``-E``, or ``enable_events``, which the
monitor sends at start and every ``ENABLE_EVERY`` s, as Flower does; see :mod:`.event_switch`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.events.state import State

from celerynb.tracking.broker_queues import QueueReader, Waiting
from celerynb.tracking.event_switch import EventSwitch

logger = logging.getLogger("celerynb.cluster_monitor")

MAX_TASKS = 10_000
POLL = 1.0
STATS_EVERY = 10.0
ENABLE_EVERY = 60.0
#: Running tasks followed in the result backend for their PROGRESS meta, at most.
FOLLOW_RUNNING = 200
#: The event a monitor sends itself to know that its receiver gets events.
PROBE = "celerynb-monitor-probe"
DECLARED_EVERY = 30.0


def _task_queue(name: str) -> bool:
    """Not one of the queues Celery uses for its events and remote control replies."""
    return bool(name) and not name.startswith("celeryev") and not name.endswith("celery.pidbox")


@dataclass(frozen=True)
class TaskRecord:
    """One task as the cluster's events tell it: what a table row, a describe() or a timeline needs.

    Times are Unix timestamps of the worker (``started``, ``ended``) or the sender (``sent``);
    None when that event was not seen.
    """

    task_id: str
    name: str | None
    state: str
    worker: str | None
    queue: str | None
    sent: float | None
    received: float | None
    started: float | None
    ended: float | None
    runtime: float | None
    args: str | None
    kwargs: str | None
    result: str | None
    exception: str | None


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as its heartbeats and ``inspect stats`` tell it."""

    hostname: str
    pool: str | None
    concurrency: int | None
    active: int | None
    processed: int | None
    heartbeat: float | None  # Unix time of the last heartbeat (None: never seen)
    alive: bool


def _record(task: Any) -> TaskRecord:
    state = task.state or "PENDING"
    ended = task.succeeded or task.failed or task.revoked or task.rejected
    queue = getattr(task, "queue", None) or task.routing_key
    return TaskRecord(task.uuid, task.name, state, task.worker.hostname if task.worker else None, queue,
                      task.sent, task.received, task.started, ended, task.runtime, task.args, task.kwargs,
                      task.result, task.exception)


def _pool_of(stats: dict[str, Any]) -> tuple[str | None, int | None]:
    """(pool, concurrency) from ``inspect stats``: the pool's module names it (``threads`` reports
    its thread count, whatever subclass a worker uses, e.g. celerynb's in-kernel one)."""
    pool = stats.get("pool") or {}
    module = str(pool.get("implementation") or "").split(":", 1)[0].rsplit(".", 1)[-1]
    name = "threads" if "threads" in pool or module == "thread" else (module or None)
    concurrency = pool.get("max-concurrency")
    return name, int(concurrency) if isinstance(concurrency, int) else None


class ClusterEvents:
    """The cluster's events, queues and running tasks' progress, kept fresh by one daemon thread.

    Args:
        app: the app whose broker and backend are watched.
        max_tasks: tasks kept (the latest); counters count every one.
        enable_events: send ``enable_events`` to every worker (at start, then every minute).
        queues: queues to watch besides those the app declares, the workers consume and the
            events name.
        on_change: called from the thread after events or queue readings changed something.
    """

    def __init__(self, app: Celery, *, max_tasks: int = MAX_TASKS, enable_events: bool = True,
                 queues: list[str] | None = None, poll: float = POLL,
                 on_change: Callable[[], None] | None = None) -> None:
        self.app = app
        self.state = State(max_tasks_in_memory=max_tasks, max_workers_in_memory=1000)
        self.counts: Counter[str] = Counter()  # event type -> how many, since start
        self.enable_events = enable_events
        self.poll = poll
        self.on_change = on_change
        self.connected = False
        self.error: str | None = None
        self.depths: dict[str, int] = {}
        self.waiting: dict[str, list[Waiting]] = {}
        self.can_peek: bool | None = None
        self._extra_queues = list(queues or [])
        self._worker_queues: set[str] = set()
        self._pools: dict[str, tuple[str | None, int | None]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._polled = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self._next = {"poll": 0.0, "stats": 0.0, "enable": 0.0, "declared": 0.0}
        self._declared: list[str] = []  # queues the broker knows (Redis), read every DECLARED_EVERY s
        self._followed: set[str] = set()
        self._dirty = True
        self._probe = uuid.uuid4().hex
        self._asked = 0.0  # when inspect stats was last sent
        self._seeded = False  # running and reserved tasks asked once, at start
        self._switch = EventSwitch(app)

    def __repr__(self) -> str:
        return f"<ClusterEvents app={self.app.main!r} tasks={len(self.state.tasks)} events={sum(self.counts.values())}>"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> ClusterEvents:
        """Start the thread; returns once the receiver listens (or after ``timeout``)."""
        if self._thread is None or not self._thread.is_alive():
            self._switch.on()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"celerynb-cluster-events-{self.app.main}",
                                            daemon=True)
            self._thread.start()
        deadline = time.monotonic() + timeout
        self._ready.wait(timeout)  # events reach us
        self._polled.wait(max(0.0, deadline - time.monotonic()))  # the first reading of queues and workers
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        self._switch.off()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        reader = QueueReader(self.app)
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    self._receiver = receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                    receiver.on_iteration = lambda: self._between_events(reader)
                    receiver.should_stop = self._stop.is_set()
                    receiver.on_consume_ready = self._on_consume_ready(receiver.on_consume_ready)
                    for _ in receiver.consume(limit=None, timeout=None, safety_interval=min(self.poll, 0.5),
                                              wakeup=True):
                        pass
            except Exception as exc:  # noqa: BLE001 - the broker went away: say so, try again
                self.connected, self.error = False, f"{type(exc).__name__}: {exc}"
                logger.debug("celerynb cluster monitor: receiver failed", exc_info=True)
                reader.close()
                self._ready.set()
                self._changed()
                self._stop.wait(1.0)
        reader.close()
        self._unfollow(set(self._followed))

    def _on_consume_ready(self, original: Callable[..., None]) -> Callable[..., None]:
        """Once the receiver consumes: wake the workers up (they send a heartbeat at once)."""

        def ready(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            self.connected, self.error = True, None

        return ready

    def _send_probe(self) -> None:
        """An event to ourselves, sent until it comes back: then events really reach us (Redis
        subscribes on the first drain, after the consumer says it is ready); :meth:`start` waits for it."""
        try:
            with self.app.events.default_dispatcher() as dispatcher:
                dispatcher.send(PROBE, probe=self._probe)
        except Exception:  # noqa: BLE001 - the next iteration sends another
            logger.debug("celerynb cluster monitor: probe not sent", exc_info=True)

    # -- events ----------------------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind == PROBE:
            if event.get("probe") == self._probe:
                self._ready.set()
            return
        with self._lock:
            self.counts[kind] += 1
            self.state.event(event)  # a task-sent event's ``queue`` becomes the task's attribute
            if kind.startswith("worker-") and event.get("hostname") not in self._pools:
                # A worker not asked yet: ask its pool soon (at most every 2 s).
                self._next["stats"] = min(self._next["stats"], self._asked + 2.0)
        self._dirty = True

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001 - a display must not stop the receiver
                logger.exception("celerynb cluster monitor: on_change failed")

    def _between_events(self, reader: QueueReader) -> None:
        """Called by the receiver between events (at least every ``safety_interval``)."""
        if self._stop.is_set():
            self._receiver.should_stop = True
            return
        if not self._ready.is_set():
            self._send_probe()
            return
        now = time.monotonic()
        if now >= self._next["enable"] and self.enable_events:
            self._next["enable"] = now + ENABLE_EVERY
            self._switch.enable_workers()
        if now >= self._next["stats"]:
            self._next["stats"] = now + STATS_EVERY
            self._read_stats()
        if now >= self._next["poll"]:
            self._next["poll"] = now + self.poll
            self._read_queues(reader)
            self._follow_running()
            self._dirty = True
        if self._dirty:
            self._dirty = False
            self._changed()

    def _read_stats(self) -> None:
        self._asked = time.monotonic()
        try:
            inspect = self.app.control.inspect(timeout=0.5)
            stats = inspect.stats() or {}
            # The queues workers consume change rarely: asked with the broker's declared queues.
            queues = (inspect.active_queues() or {}) if time.monotonic() >= self._next["declared"] else {}
        except Exception:  # noqa: BLE001
            return
        if stats and not self._seeded:
            self._seeded = True
            self._seed_from_workers(self.app.control.inspect(timeout=0.5, limit=len(stats)))
        with self._lock:
            for hostname, found in stats.items():
                if isinstance(found, dict):
                    self._pools[hostname] = _pool_of(found)
            for found in queues.values():
                for queue in found or []:
                    name = queue.get("name") if isinstance(queue, dict) else None
                    if name and _task_queue(name):
                        self._worker_queues.add(name)

    def _seed_from_workers(self, inspect: Any) -> None:
        """Tasks the workers run or hold when the monitor starts (their events came before it):
        ``inspect active`` and ``reserved``, fed to the State as the events it missed."""
        try:
            found = [("task-started", inspect.active() or {}), ("task-received", inspect.reserved() or {})]
        except Exception:  # noqa: BLE001 - the events that follow still show them as they move
            return
        with self._lock:
            for kind, by_worker in found:
                for hostname, requests in by_worker.items():
                    for request in requests or []:
                        task_id = request.get("id") if isinstance(request, dict) else None
                        if not task_id or task_id in self.state.tasks:
                            continue
                        queue = (request.get("delivery_info") or {}).get("routing_key")
                        began = request.get("time_start")  # wall time on some versions, monotonic on others
                        began = began if isinstance(began, int | float) and began > 1e9 else time.time()
                        self.state.event({
                            "type": kind, "uuid": task_id, "hostname": hostname, "clock": 0,
                            "local_received": None,  # not a heartbeat of the worker
                            "timestamp": began, "name": request.get("name"),
                            "args": str(request.get("args")), "kwargs": str(request.get("kwargs")), "queue": queue,
                        })

    def queue_names(self) -> list[str]:
        """Every queue worth watching: the app's, the workers', those events and the caller named."""
        names = dict.fromkeys([*self.app.amqp.queues.keys(), *sorted(self._worker_queues), *self._extra_queues,
                               *self._declared])
        with self._lock:
            tasks = list(self.state.tasks.values())[-1000:]
        for task in tasks:
            queue = getattr(task, "queue", None)
            if queue:
                names[queue] = None
        return [n for n in names if _task_queue(n)]

    def watch_queue(self, name: str) -> None:
        if name not in self._extra_queues:
            self._extra_queues.append(name)
            self._next["poll"] = 0.0

    def _read_queues(self, reader: QueueReader) -> None:
        try:
            if time.monotonic() >= self._next["declared"]:
                self._next["declared"] = time.monotonic() + DECLARED_EVERY
                self._declared = sorted(reader.declared())
            names = self.queue_names()
            depths = reader.depths(names)
            waiting = reader.peek(names)
            can_peek = reader.can_peek
        except Exception:  # noqa: BLE001 - read again next round, on a new connection
            reader.close()
            return
        with self._lock:
            self.depths, self.waiting, self.can_peek = depths, waiting, can_peek
        self._polled.set()

    def _follow_running(self) -> None:
        """Running tasks of the window are followed in the result backend (PROGRESS meta); ended ones let go."""
        from celerynb.tracking.backend_source import BackendNotObservable
        from celerynb.tracking.monitor import get_monitor

        monitor = get_monitor(self.app)
        with self._lock:
            recent = list(self.state.tasks.values())[-FOLLOW_RUNNING * 5:]
            # Names the events did not carry (a task received before the monitor started): the
            # result backend has them (result_extended), read by the same follow.
            for task in recent:
                if task.name is None and task.uuid in self._followed:
                    task.name = monitor.snapshot(task.uuid).name
            running = {t.uuid for t in recent
                       if (t.state in ("STARTED", "RECEIVED", "RETRY") and not t.ready) or t.name is None}
        running = set(list(running)[:FOLLOW_RUNNING])
        new = running - self._followed
        if new:
            try:
                monitor.track(new)
            except (BackendNotObservable, Exception):  # noqa: BLE001 - no readable backend: events only
                return
        self._followed = (self._followed & running) | new

    def _unfollow(self, ids: set[str]) -> None:
        self._followed -= ids

    # -- reading (any thread) ----------------------------------------------------------------
    def tasks(self, limit: int | None = None) -> list[TaskRecord]:
        """The latest tasks, newest first (at most ``limit``)."""
        with self._lock:
            tasks = list(self.state.tasks.values())
        tasks.reverse()  # the LRU keeps the most recently touched last
        records = [_record(t) for t in (tasks if limit is None else tasks[:limit])]
        return sorted(records, key=lambda r: -(r.sent or r.received or r.started or r.ended or 0))

    def task(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            task = self.state.tasks.get(task_id)
            return _record(task) if task is not None else None

    def workers(self) -> list[WorkerRecord]:
        with self._lock:
            found = list(self.state.workers.values())
            pools = dict(self._pools)
        records = []
        for worker in found:
            pool, concurrency = pools.get(worker.hostname, (None, None))
            beat = worker.heartbeats[-1] if worker.heartbeats else None
            records.append(WorkerRecord(worker.hostname, pool, concurrency, worker.active, worker.processed, beat,
                                        bool(worker.alive)))
        for hostname, (pool, concurrency) in pools.items():  # answered inspect, never sent an event
            if hostname not in {w.hostname for w in found}:
                records.append(WorkerRecord(hostname, pool, concurrency, None, None, None, True))
        return sorted(records, key=lambda w: w.hostname)

    def state_counts(self) -> dict[str, int]:
        """Tasks of the window by state."""
        with self._lock:
            return dict(Counter(t.state or "PENDING" for t in self.state.tasks.values()))

    def progress_meta(self, task_id: str) -> Any:
        """The PROGRESS meta the result backend holds for a running task (None when none)."""
        if task_id not in self._followed:
            return None
        from celerynb.tracking.monitor import get_monitor

        snap = get_monitor(self.app).snapshot(task_id)
        return snap.info if snap.state not in ("PENDING", "STARTED", "RECEIVED") and not snap.ready else None
