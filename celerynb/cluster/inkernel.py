"""Celery workers that run inside this process, in daemon threads.

The same idea as ``celery.contrib.testing.worker.start_worker`` with a product's lifecycle
around it: readiness is an event, tasks registered after start are accepted, workers can be
stopped and started again in one process (Celery's global ``should_terminate`` reset, the
threads pool's executor shut down).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from celery.concurrency.solo import TaskPool as CelerySoloPool
from celery.concurrency.thread import ApplyResult
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.utils.nodenames import anon_nodename
from celery.worker import WorkController
from celery.worker.consumer import Consumer
from kombu.asynchronous import set_event_loop

from celerynb import _compat
from celerynb.workers import capture, stopping
from celerynb.workers.base import run_tasks_as
from celerynb.workers.consumer import Consumer as _NotebookConsumer

logger = logging.getLogger("celerynb.worker")


#: Longest wait before a worker's loop notices a stop.
_STOP_CHECK_INTERVAL = 0.1


def _noop() -> None:
    """Wakes the event loop (see ``_STOP_CHECK_INTERVAL``)."""


class _ThreadWorkController(WorkController):
    """A WorkController that signals readiness through an event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready_event = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Consumer) -> None:
        self.ready_event.set()


class TaskPool(ThreadTaskPool):
    """Celery's threads pool, each of whose threads takes the worker's app as its current app.

    Celery runs a task through ``trace_task_ret``, which finds it in ``current_app``; a pool
    thread has none of its own and falls back to the default app. While a user's project is in
    use that is the project, whose registry holds celerynb's shared tasks too, bound to the
    project's result backend: results would land there. Named like Celery's class, since
    ``inspect stats`` shows the name to users as the pool's implementation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor.shutdown(wait=False)  # made by the parent, no thread started yet
        self.executor = ThreadPoolExecutor(max_workers=self.limit, initializer=self._adopt_app,
                                           thread_name_prefix="celerynb-pool")  # its logs: the worker log

    #: The worker's node name, reported by the tasks this pool runs (see ``run_tasks_as``).
    node_name: str | None = None
    #: A cancel or a time limit stops a running task (:mod:`celerynb.workers.stopping`).
    stops_threads = True

    def _adopt_app(self) -> None:
        if self.app is not None:
            self.app.set_current()
        if self.node_name:
            run_tasks_as(self.node_name)

    def on_apply(self, target: Any, args: Any = None, kwargs: Any = None, callback: Any = None,
                 accept_callback: Any = None, **options: Any) -> ApplyResult:
        return ApplyResult(self.executor.submit(stopping.apply_target, target, args, kwargs, callback,
                                                accept_callback, **_limits(self, options)))

    def terminate_job(self, pid: int, signal: Any = None) -> None:
        """Other apps' tasks: their revoke is recorded and stops them (celerynb's own use its request class)."""


class SoloPool(CelerySoloPool):
    """Celery's solo pool whose running task a cancel or time limit stops (see :class:`TaskPool`)."""

    stops_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_apply = self._apply

    def _apply(self, target: Any, args: Any = None, kwargs: Any = None, callback: Any = None,
               accept_callback: Any = None, **options: Any) -> None:
        stopping.apply_target(target, args, kwargs, callback, accept_callback, **_limits(self, options))

    def terminate_job(self, pid: int, signal: Any = None) -> None:
        """See :meth:`TaskPool.terminate_job`."""


def _limits(pool: Any, options: dict) -> dict:
    """The call's time limits, else the worker's (``task_time_limit``), as prefork applies them."""
    return {"timeout_callback": options.get("timeout_callback"),
            "soft_timeout": options.get("soft_timeout") or pool.options.get("soft_timeout"),
            "timeout": options.get("timeout") or pool.options.get("timeout")}


class InProcessWorker:
    """One Celery worker consuming in a daemon thread of this process."""

    def __init__(
        self,
        app: Celery,
        *,
        pool: str = "threads",
        concurrency: int = 4,
        queues: list[str] | None = None,
        hostname: str | None = None,
        logfile: str | None = None,
        loglevel: str = "INFO",
        make_current: bool = True,
    ) -> None:
        if pool not in ("threads", "solo"):
            raise ValueError(f"In-process workers use the 'threads' or 'solo' pool, not {pool!r}.")
        self.app = app
        self.pool = pool
        self.concurrency = 1 if pool == "solo" else concurrency
        self.queues = list(queues) if queues else None
        self.hostname = hostname or anon_nodename(prefix="kernel")
        self.logfile = logfile
        self.loglevel = loglevel
        self.make_current = make_current
        self.controller: _ThreadWorkController | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<InProcessWorker {self.hostname} pool={self.pool} concurrency={self.concurrency}>"

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, timeout: float = 15.0) -> InProcessWorker:
        app = self.app
        app.finalize()
        # The app in use becomes Celery's current one, as a worker does; a worker of another app
        # must leave it (its shared tasks would follow). Its own threads take its app either way.
        if self.make_current:
            app.set_current()
            app.set_default()
        # Each worker gets its own event loop. kombu keeps one process-wide by default, so two
        # workers would share it, and one ending late (a warm stop waiting on a task) would
        # close it under the next cluster's worker.
        set_event_loop(None)
        # Tasks' prints and records go to their own logs, never to the cell (until stop_workers).
        capture.install("threads")
        self.controller = controller = _ThreadWorkController(
            app=app,
            hostname=self.hostname,
            pool_cls=type("TaskPool", (TaskPool,), {"node_name": self.hostname}) if self.pool == "threads" else SoloPool,
            concurrency=self.concurrency,
            # Explicit names: the worker narrows the app's shared Queues to what it is given,
            # and a later worker started with None would inherit that narrowing.
            queues=self.queues or list(app.amqp.queues.keys()),
            consumer_cls=_NotebookConsumer,
            loglevel=self.loglevel,
            logfile=self.logfile,
            ready_callback=None,
            # Heartbeats, as worker processes send them (see processes.py): task events when asked
            # (``enable_events``); no mingle (a second's wait at start) nor gossip (every other
            # worker's events processed here).
            without_heartbeat=False,
            without_mingle=True,
            without_gossip=True,
            optimization="fair",
        )
        hub = getattr(controller, "hub", None)
        if hub is not None:
            # The loop checks Celery's stop flags once per turn, and a turn can wait up to 10 s
            # for the broker (AMQP): a short timer keeps a stop prompt on every transport.
            hub.call_repeatedly(_STOP_CHECK_INTERVAL, _noop)
        self.thread = threading.Thread(target=self._run, name=f"celerynb-worker-{self.hostname}", daemon=True)
        deadline = time.monotonic() + timeout
        self.thread.start()
        while not controller.ready_event.wait(0.01):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                break
        # Starting a worker sets Celery's "join will block" flag: result.get() in this
        # process would then refuse to run.
        _compat.allow_result_get()
        if not controller.ready_event.is_set():
            raise RuntimeError(f"in-process worker {self.hostname} failed to start: {self.error!r}")
        return self

    def _run(self) -> None:
        self.app.set_current()  # this thread's current app: the consumer, and the solo pool's tasks
        run_tasks_as(self.hostname)
        try:
            self.controller.start()
        except BaseException as exc:  # noqa: BLE001 - reported through .error and start()
            self.error = exc
            logger.exception("in-process worker %s stopped with an error", self.hostname)

    def add_queue(self, name: str) -> None:
        if self.controller and self.controller.consumer:
            self.controller.consumer.add_task_queue(name)

    def forget_task(self, name: str) -> None:
        """Drop a task's cached strategy so that a redefined task is rebuilt on its next message."""
        consumer = self.controller.consumer if self.controller else None
        if consumer is not None:
            consumer.strategies.pop(name, None)

    def active_requests(self) -> int:
        return len(_compat.active_request_ids())

    def shutdown_pool_executor(self) -> None:
        pool = getattr(self.controller, "pool", None)
        executor = getattr(pool, "executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


#: Extra seconds a worker still stopping after ``timeout`` gets once told to stop cold.
_COLD_GRACE = 2.0


def stop_workers(workers: list[InProcessWorker], timeout: float = 5.0, *, at_exit: bool = False) -> list[str]:
    """Stop all in-process workers together; return the ids of tasks that were still running.

    Celery's stop flag is process-wide, so every in-process worker stops at once. The stop is
    warm: consuming ends at once and running tasks may finish until ``timeout`` (which bounds
    the whole stop, not each worker); tasks still running then are returned, their threads
    left to end on their own. At interpreter exit the stop is cold: tasks are not waited for.
    A worker is only ever stopped from its own thread, through the flags: stopping it from
    here would do I/O on its broker connection concurrently with it (an AMQP connection then
    reads garbage frames and hangs).
    """
    live = [w for w in workers if w.alive]
    deadline = time.monotonic() + timeout
    if live:
        _compat.request_worker_stop(cold=at_exit)
        _join(live, deadline)
        late = [w for w in live if w.alive and _still_consuming(w.controller)]
        if late and not at_exit:
            _compat.request_worker_stop(cold=True)
            _join(late, time.monotonic() + _COLD_GRACE)
            for worker in late:
                if worker.alive and _still_consuming(worker.controller):
                    _end_loop(worker.controller)
                    logger.warning("in-process worker %s did not stop in time; left to end", worker.hostname)
    for worker in workers:
        if worker.controller is not None:
            worker.shutdown_pool_executor()
    still = _compat.active_request_ids()
    capture.uninstall()  # the kernel's own streams back (tasks left running print there again)
    if not at_exit:
        _compat.clear_worker_stop_flags()
    return still


def _join(workers: list[InProcessWorker], deadline: float) -> None:
    for worker in workers:
        worker.thread.join(max(0.0, deadline - time.monotonic()))


def _still_consuming(controller: WorkController | None) -> bool:
    from celery.bootsteps import RUN

    blueprint = getattr(controller, "blueprint", None)
    return blueprint is not None and blueprint.state == RUN


def _end_loop(controller: WorkController) -> None:
    """Make the consumer's loop end at its next turn, once the process-wide flags are reset."""
    from celery.bootsteps import CLOSE

    consumer = getattr(controller, "consumer", None)
    if consumer is not None and consumer.blueprint is not None:
        consumer.blueprint.state = CLOSE
