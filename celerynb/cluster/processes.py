"""``celery worker`` processes started and stopped by PID."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

from celery import Celery

from celerynb.cluster import spawn


class WorkerProcessError(RuntimeError):
    """A worker process exited or did not become ready."""


class WorkerProcess:
    """One ``celery -A APP worker`` child in its own session, configured through its environment."""

    def __init__(
        self,
        *,
        app_path: str,
        broker_url: str,
        result_backend: str,
        name: str,
        concurrency: int = 1,
        pool: str = "prefork",
        queues: list[str] | None = None,
        logfile: str | None = None,
        extra_env: dict[str, str] | None = None,
        detached: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.app_path = app_path
        self.broker_url = broker_url
        self.result_backend = result_backend
        self.name = name
        self.concurrency = concurrency
        self.pool = pool
        self.queues = queues
        self.logfile = logfile
        self.extra_env = extra_env or {}
        self.detached = detached  # False: the worker gets SIGTERM when this process dies
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid={self.pid} pool={self.pool}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def died(self) -> bool:
        """True when the process exited without being stopped (killed, crashed)."""
        return self.process is not None and self.process.poll() is not None

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app_path, "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", self.name, "--loglevel", "INFO",
            # Heartbeats on, so ``enable_events`` (Flower, ``celery control``, the cluster monitor)
            # turns task events on; they cost a publish each on the hot path until then. Mingle and
            # gossip off: mingle waits ~1 s at start for other workers' replies, and gossip has every
            # worker process every other worker's events (celerynb needs neither).
            "--without-mingle", "--without-gossip",
        ]
        if self.queues:
            cmd += ["--queues", ",".join(self.queues)]
        if self.logfile:
            cmd += ["--logfile", self.logfile]
        return cmd + self.extra_args

    def start(self, app: Celery, timeout: float = 30.0) -> WorkerProcess:
        env = dict(os.environ, **self.extra_env)
        env["CELERY_BROKER_URL"] = self.broker_url
        env["CELERY_RESULT_BACKEND"] = self.result_backend
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Not detached: SIGKILL when this process dies, even by SIGKILL (see spawn's docstring).
        start = subprocess.Popen if self.detached else functools.partial(spawn.popen, death_signal=signal.SIGKILL)
        self.process = start(
            self.command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if self.logfile else None,
            start_new_session=True,
        )
        self.wait_ready(app, timeout)
        return self

    def wait_ready(self, app: Celery, timeout: float) -> None:
        """Ready when it answers a ping on the broker's control channel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise WorkerProcessError(f"worker process {self.name} exited at start; log: {self.logfile}")
            replies = app.control.ping(destination=[self.name], timeout=0.3)
            if any(self.name in reply for reply in replies):
                return
        self.stop()
        raise WorkerProcessError(f"worker process {self.name} was not ready within {timeout:.0f} s; log: {self.logfile}")

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (TERM), then KILL of the whole process group after ``timeout``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)
