"""The local cluster: the embedded server, workers in this process, worker processes, beat.

One per process (Celery's worker state is process-wide). ``celerynb.start()`` gets or creates
it; the first task submitted with no broker configured starts it too.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import threading
from typing import Any

from celery import Celery

from celerynb import _compat, config
from celerynb.cluster import apps, server
from celerynb.cluster.inkernel import InProcessWorker, stop_workers
from celerynb.cluster.processes import WorkerProcess
from celerynb.cluster.queues import queue_lengths
from celerynb.cluster.worker_logs import WorkerLogFile
from celerynb.cluster.worker_loss import WorkerLoss, recover
from celerynb.config import scratch
from celerynb.rendering import render
from celerynb.workers import cells, local_results, urls

logger = logging.getLogger("celerynb")

_current: LocalCluster | None = None
lock = threading.RLock()


class ClusterError(RuntimeError):
    """The local cluster cannot do what was asked."""


class ServerDied(ClusterError):
    """The cluster's embedded server is gone: nothing can be sent until the cluster restarts."""


class LocalCluster:
    """An embedded server plus workers, all stopped by :meth:`stop`.

    Args:
        app: the Celery app (default: ``celerynb.workers.celery_app.app``).
        workers: in-process workers (daemon threads of this process).
        pool: ``threads`` or ``solo`` for in-process workers.
        concurrency: threads per in-process worker.
        queues: queues to consume (default: every queue the app declares).
        processes: execution slots in a separate ``celery worker`` process: one prefork worker
            with that many children, as users run Celery (measured faster than as many
            one-child workers: half the round trip, see ``benchmarks/README.md``).
        beat: run the app's ``beat_schedule`` in this process.
        persistent: keep queued messages across a server restart (AOF).
    """

    def __init__(
        self,
        app: Celery | None = None,
        *,
        workers: int = 1,
        pool: str = "threads",
        concurrency: int = 4,
        queues: list[str] | None = None,
        processes: int = 0,
        beat: bool = False,
        persistent: bool = False,
    ) -> None:
        if pool not in ("threads", "solo"):
            raise ValueError(f"pool must be 'threads' or 'solo' for in-process workers, not {pool!r}.")
        if workers < 0 or processes < 0 or concurrency < 1:
            raise ValueError("workers and processes must be >= 0 and concurrency >= 1.")
        self.app = app or apps.current_app()
        self.n_workers = workers
        self.pool = pool
        self.concurrency = concurrency
        self.queues = list(queues) if queues else None
        self.n_processes = processes
        self.beat_enabled = beat
        self.persistent = persistent
        self.workers: list[InProcessWorker] = []
        self.processes: list[WorkerProcess] = []
        self.losses: list[WorkerLoss] = []
        self._reported: set[str] = set()
        self.beat: Any = None
        self.server: server.EmbeddedServer | None = None
        self.log_dir: str | None = None
        self._logs: WorkerLogFile | None = None
        self.running = False
        self.abandoned: list[str] = []
        self._cell_key: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Start the server if needed, then the workers and beat; returns self."""
        global _current
        with lock:
            if self.running:
                return self
            if _current is not None and _current is not self and _current.running:
                raise ClusterError(
                    "A LocalCluster already runs in this process: use celerynb.start() to get it, "
                    "or stop it first."
                )
            _current = self
            self._ensure_broker()
            if cells.cell_key() is None:
                # Worker processes of this cluster verify shipped cells with this key.
                self._cell_key = secrets.token_hex(32)
                cells.set_process_key(self._cell_key)
            # Under the runtime dir, named after this process: a later start sweeps it if we are killed.
            scratch.sweep()
            self.log_dir = str(scratch.make_scratch_dir("logs"))
            self._logs = WorkerLogFile(self.log_file).attach()
            self.running = True
            try:
                for _ in range(self.n_workers):
                    self.add_worker()
                if self.n_processes:
                    self.add_process(concurrency=self.n_processes)
                if self.beat_enabled:
                    self.start_beat()
            except BaseException:
                self.stop()
                raise
            _register_exit_hooks()
            self._serve_own_results()
            return self

    def _serve_own_results(self) -> None:
        """The kernel's own workers alone take this cluster's tasks (its embedded server, no
        worker process): their results go straight to the kernel's ``.get()`` (:mod:`local_results`)."""
        local_results.serve(self.app, self.running and self.server is not None and bool(self.workers)
                            and not self.processes)

    def _ensure_broker(self) -> None:
        app = self.app
        if self.persistent and urls.source_of(app) is None and config.resolve() is None:
            server.shared_server(persistent=True)  # else resolving would start a plain one
        app.conf.broker_url  # noqa: B018 - the first read resolves the URLs
        if urls.source_of(app) is None:
            if apps.saved_settings(app) is not None:
                apps.make_local(app)  # `use(app, local=True)` whose server was stopped since
            elif urls.is_managed(app):
                urls.resolve_into(app)
            else:
                urls.mark(app, "app")  # a user's app keeps its own broker
        if urls.source_of(app) == "embedded":
            running = server.shared_server(start=False)
            if running is None or running.url != app.conf.broker_url:
                running = server.shared_server(persistent=self.persistent)
                urls.apply(app, running.url, running.url, "embedded")
            self.server = running

    @property
    def broker_url(self) -> str:
        return self.app.conf.broker_url or ""

    @property
    def source(self) -> str:
        return urls.source_of(self.app) or "unresolved"

    @property
    def log_file(self) -> str | None:
        return os.path.join(self.log_dir, "workers.log") if self.log_dir else None

    def add_worker(
        self, *, pool: str | None = None, concurrency: int | None = None, queues: list[str] | None = None
    ) -> InProcessWorker:
        """Start one more worker thread in this process (ready when this returns)."""
        if not self.running:
            raise ClusterError("The cluster is stopped: start it first.")
        # Celery's stop flags are process-wide: a flag left by an earlier stop would end this
        # worker at its first loop.
        _compat.clear_worker_stop_flags()
        worker = InProcessWorker(
            self.app,
            pool=pool or self.pool,
            concurrency=concurrency or self.concurrency,
            queues=queues or self.queues,
            hostname=f"kernel{os.getpid()}-{len(self.workers) + 1}@{_host()}",
            logfile=self.log_file,
            make_current=self.app is apps.current_app(),
        )
        worker.start()
        self.workers.append(worker)
        if worker.queues is None:
            for name in _task_queues(self.app):
                worker.add_queue(name)
        self._serve_own_results()
        return worker

    def add_process(
        self, concurrency: int = 1, pool: str = "prefork", *, extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start one ``celery worker`` process on this cluster's broker (ready when this returns).

        ``extra_args`` go to ``celery worker`` (e.g. ``["--include", "mymodule"]``); ``env`` is
        added to its environment.
        """
        if not self.running:
            raise ClusterError("The cluster is stopped: start it first.")
        proc = WorkerProcess(
            app_path=_app_path(self.app),
            broker_url=self.broker_url,
            result_backend=self.app.conf.result_backend or "",
            name=f"proc{os.getpid()}-{len(self.processes) + 1}@{_host()}",
            concurrency=concurrency,
            pool=pool,
            queues=self.queues or [q.name for q in self.app.amqp.queues.values()],
            logfile=os.path.join(self.log_dir, f"process-{len(self.processes) + 1}.log"),
            extra_env={**(env or {}), cells.KEY_ENV: cells.cell_key() or ""},
            extra_args=extra_args,
        )
        self.processes.append(proc)
        self._serve_own_results()  # off before its first task can be sent
        proc.start(self.app)
        return proc

    def start_beat(self) -> None:
        from celery.beat import EmbeddedService

        self.beat = EmbeddedService(
            self.app, thread=True, schedule_filename=os.path.join(self.log_dir, "beat-schedule")
        )
        self.beat.start()

    def add_queue(self, name: str) -> None:
        """Make every in-process worker consume ``name`` too (cell tasks with ``--queue``)."""
        for worker in self.workers:
            if name not in (worker.queues or []):
                worker.add_queue(name)
                if worker.queues is not None:
                    worker.queues.append(name)

    def forget_task(self, name: str) -> None:
        for worker in self.workers:
            worker.forget_task(name)

    def stop(self, timeout: float = 5.0, *, keep_server: bool = False, _at_exit: bool = False) -> LocalCluster:
        """Stop everything this cluster started; tasks still running after ``timeout`` are reported.

        ``keep_server``: leave the embedded server running (and the app pointed at it), for a
        caller that may start a cluster on it again (``connect`` until its switch succeeded).
        """
        global _current
        with lock:
            local_results.serve(self.app, False)
            if self.beat is not None:
                self.beat.stop()
                self.beat = None
            self.abandoned = stop_workers(self.workers, timeout, at_exit=_at_exit)
            if self.abandoned:
                logger.warning(
                    "celerynb: %d task(s) were still running when the cluster stopped: %s",
                    len(self.abandoned),
                    ", ".join(self.abandoned),
                )
            self.workers = []
            for proc in self.processes:
                proc.stop(timeout)
            self.processes = []
            if self.server is not None and keep_server:
                self.server = None
            elif self.server is not None:
                urls.detach_results(self.app)
                server.stop_shared_server()
                self.server = None
                urls.forget(self.app)
            if self._cell_key is not None:
                cells.set_process_key(None)
                self._cell_key = None
            if self._logs is not None:
                self._logs.detach()
                self._logs = None
            if self.log_dir:
                shutil.rmtree(self.log_dir, ignore_errors=True)
                self.log_dir = None
            self.running = False
            if _current is self:
                _current = None
            return self

    def options(self) -> dict[str, Any]:
        """The keyword arguments this cluster was made with: ``LocalCluster(app, **options)`` is its twin."""
        return dict(workers=self.n_workers, pool=self.pool, concurrency=self.concurrency, queues=self.queues,
                    processes=self.n_processes, beat=self.beat_enabled, persistent=self.persistent)

    def restart(self) -> LocalCluster:
        self.stop()
        return self.start()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health ----------------------------------------------------------------------------
    @property
    def server_died(self) -> bool:
        """True when the embedded server this cluster started has exited (killed, crashed)."""
        return self.running and self.server is not None and not self.server.running

    def check_server(self) -> None:
        """Raise :class:`ServerDied` with what to do, instead of Celery's retries and tracebacks.

        Cheap (one ``waitpid`` with WNOHANG): it runs before every task is sent.
        """
        if self.server_died:
            code = self.server.process.returncode if self.server.process is not None else None
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise ServerDied(
                f"celerynb: the embedded server died ({how}); tasks queued on it were lost. "
                "`%celery restart` (or celerynb.current().restart()) starts a new one."
            )

    def check_workers(self) -> list[WorkerLoss]:
        """Worker processes found dead since the last check, each reported once; what they held
        goes back to the queue at once (see :mod:`celerynb.cluster.worker_loss`).

        Cheap while every process lives (one ``waitpid`` each); the monitor calls it on every
        reconcile, ``status()`` too.
        """
        with lock:
            dead = [p for p in self.processes if p.died and p.name not in self._reported]
            if not dead or not self.running:
                return []
            self._reported.update(p.name for p in dead)
            live = [p for p in self.processes if p.alive]
        losses = recover(self.app, dead, live)
        self.losses.extend(losses)
        return losses

    # -- reporting -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Workers, queues with their lengths, and the broker with its password masked."""
        queues = sorted({q.name for q in self.app.amqp.queues.values()} | set(self.queues or []))
        died = self.server_died
        if not died:
            self.check_workers()
        return {
            "running": self.running,
            "server_died": died,
            "broker": config.mask_url(self.broker_url),
            "source": self.source,
            "server_pid": self.server.pid if self.server else None,
            "workers": [
                {"name": w.hostname, "kind": "thread", "pool": w.pool, "concurrency": w.concurrency, "alive": w.alive}
                for w in self.workers
            ]
            + [
                {"name": p.name, "kind": "process", "pool": p.pool, "concurrency": p.concurrency,
                 "alive": p.alive, "pid": p.pid, "died": p.died}
                for p in self.processes
            ],
            "queues": queue_lengths(self.app, queues) if self.running and not died else {},
            "beat": self.beat is not None,
            "log_file": self.log_file,
        }

    def __repr__(self) -> str:
        state = ("broken: its server died" if self.server_died else "running") if self.running else "stopped"
        return (
            f"<LocalCluster {state} broker={config.mask_url(self.broker_url) if self.running else '-'} "
            f"workers={len(self.workers)} processes={len(self.processes)}>"
        )

    def _repr_html_(self) -> str:
        return render("cluster_card", status=self.status() if self.running else {"running": False})


def _task_queues(app: Celery) -> set[str]:
    """Queues named by registered tasks (``queue=``) that the app does not declare."""
    declared = set(app.amqp.queues)
    named = {getattr(task, "queue", None) for task in app.tasks.values()}
    return {q for q in named if isinstance(q, str) and q and q not in declared}


def _host() -> str:
    import socket

    return socket.gethostname()


def _app_path(app: Celery) -> str:
    path = apps.import_path(app)
    if path:
        return path
    raise ClusterError("Worker processes need an importable app: use celerynb.use('module:app') first.")


def current() -> LocalCluster | None:
    """The running cluster of this process, if any."""
    return _current if _current is not None and _current.running else None


_exit_hooks_registered = False


def _stop_at_exit() -> None:
    """Interpreter exit: stop quickly (a kernel that lingers gets killed) and never orphan the server."""
    try:
        running = current()
        if running is not None:
            running.stop(timeout=0.5, _at_exit=True)
    except Exception:  # noqa: BLE001 - interpreter teardown: nothing left to report to
        pass
    server.stop_shared_server()


def _register_exit_hooks() -> None:
    """Stop before the interpreter joins ``concurrent.futures`` threads, or the kernel hangs."""
    global _exit_hooks_registered
    if _exit_hooks_registered:
        return
    _exit_hooks_registered = True
    _compat.run_before_thread_join_at_exit(_stop_at_exit)
    atexit.register(_stop_at_exit)

