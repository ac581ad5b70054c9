"""Each task's own stdout, stderr and ``logging`` records, captured while it runs.

Two ways, chosen per process:

- ``threads`` (in-kernel workers, ``celery worker --pool threads``): many tasks run at once in
  one process, so capture is per thread. ``sys.stdout``/``sys.stderr`` are replaced by a
  :class:`RoutedStream` that gives a write to the task running in the writing thread, and
  passes every other write through unchanged (a cell's own prints still reach the cell). A
  logging handler gives each record to the task running in ``record.thread``. Writes to file
  descriptors 1 and 2 (C code) cannot be told apart by thread and are not captured here.
- ``fd`` (prefork children, solo worker processes): one task at a time, so fds 1 and 2 are
  pointed at a private memory file for the task's duration (``dup2``, then restored): C-level
  writes are captured too. What was written is also forwarded to the original fds, so the
  worker's own output (terminal, log) keeps everything as before.

The text goes to :mod:`celerynb.workers.task_logs` (never to a cell). Only apps whose task
class says ``captures_output`` (celerynb's ``NotebookTask``) capture: users' own apps do not.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from celerynb.workers import task_logs
from celerynb.workers.capture_fd import FdFile

logger = logging.getLogger("celerynb.capture")

#: None (no capture in this process), "threads" or "fd".
mode: str | None = None
#: The capture of the task each thread runs now (thread ident -> capture).
active: dict[int, TaskCapture] = {}
_fd_file: FdFile | None = None
_lock = threading.Lock()
_FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")


class TaskCapture:
    """The output of one running task, sent to the result backend in throttled flushes."""

    def __init__(self, backend: Any, task_id: str, fd_file: FdFile | None) -> None:
        self.backend, self.task_id, self.fd_file = backend, task_id, fd_file
        self.chunks: list[str] = []
        self.pending = 0
        self.level = 0
        self.sent_level = 0
        self.last_record: logging.LogRecord | None = None
        self.lock = threading.Lock()
        self.closed = False

    def write(self, text: str, stderr: bool) -> int:
        if stderr and text and self.level < logging.WARNING:
            self.level = logging.WARNING
        if self.fd_file is not None:  # the fd file holds the text; only the marker is noted here
            return -1
        with self.lock:
            self.chunks.append(text)
            self.pending += len(text)
            if self.pending > 2 * task_logs.CAP:  # a flood between two flushes: keep the tail only
                tail = "".join(self.chunks)[-task_logs.CAP:]
                self.chunks, self.pending = [tail], len(tail)
        return len(text)

    def record(self, record: logging.LogRecord) -> None:
        self.level = max(self.level, record.levelno)
        if self.fd_file is not None:
            if not _reaches_fds(record):  # else its handler writes it to fd 1/2: in the file already
                self.fd_file.note(_line(record))
            return
        self.write(_line(record), False)

    def flush(self, final: bool = False, failed: bool = False) -> None:
        """Send what is new (nothing new: no round trip). Never raises into the task.

        Under the capture's lock from taking to sending: the flusher thread and the task's own
        final flush never send out of order, and nothing is taken once the task ended."""
        with self.lock:
            if self.closed:
                return
            self.closed = final
            if self.fd_file is not None:
                data = self.fd_file.take()
                if final:
                    self.fd_file.reset()
            elif self.chunks:
                data = "".join(self.chunks).encode("utf-8", "replace")
                self.chunks, self.pending = [], 0
            else:
                data = b""
            level = self.level
            if not data and level <= self.sent_level:
                return
            try:
                # The result's own expiry (its end state's, once known).
                ttl = task_logs.result_store.ttl_for(self.backend, "FAILURE" if failed else "SUCCESS")
                task_logs.append(self.backend, self.task_id, data, level, ttl)
                self.sent_level = level
            except Exception:  # noqa: BLE001 - a log that cannot be stored must not fail the task
                logger.warning("could not store the logs of task %s", self.task_id, exc_info=True)


def _line(record: logging.LogRecord) -> str:
    try:
        return _FORMAT.format(record) + "\n"
    except Exception:  # noqa: BLE001 - a bad format string in the task's own call
        return f"{record.levelname} {record.name}: {record.msg!r} {record.args!r}\n"


def _reaches_fds(record: logging.LogRecord) -> bool:
    """Whether a handler of the record's loggers writes it to fd 1 or 2 (a worker on a terminal)."""
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        for handler in current.handlers:
            stream = getattr(handler, "stream", None)
            if stream is not None and record.levelno >= handler.level:
                try:
                    if stream.fileno() in (1, 2):
                        return True
                except (AttributeError, OSError, ValueError):
                    pass
        if not current.propagate:
            break
        current = current.parent
    return False


class RoutedStream:
    """``sys.stdout``/``sys.stderr`` for many threads: a task's thread writes to its task."""

    def __init__(self, original: Any, stderr: bool) -> None:
        self.original, self.stderr = original, stderr

    def write(self, text: str) -> int:
        capture = active.get(threading.get_ident())
        if capture is not None:
            written = capture.write(text, self.stderr)
            if written >= 0:
                return written
        return self.original.write(text)

    def flush(self) -> None:
        capture = active.get(threading.get_ident())
        if capture is None or capture.fd_file is not None:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class _RecordRouter(logging.Handler):
    """Gives each record to the task running in its thread; other records go on as before."""

    #: The in-kernel worker log ignores this handler when it decides about Python's last resort.
    celerynb_passive = True

    def handle(self, record: logging.LogRecord) -> bool:
        capture = active.get(record.thread) if record.thread is not None else None
        if capture is None or capture.last_record is record or record.name.startswith("celerynb.capture"):
            return False
        capture.last_record = record  # the same record reaching root and "celery": once
        capture.record(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # handle() does it all
        pass


_router = _RecordRouter()
#: Celery's task logger does not propagate in worker processes; "celery" not in the kernel.
_LOGGERS = ("", "celery", "celery.task")


def _install_streams_and_router() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RoutedStream):
            setattr(sys, name, RoutedStream(stream, name == "stderr"))
    for name in _LOGGERS:
        target = logging.getLogger(name)
        if _router not in target.handlers:
            target.addHandler(_router)


#: Set to ``0`` in a worker's environment (or the kernel's) to capture nothing there.
ENV_SWITCH = "CELERYNB_CAPTURE_LOGS"


def install(kind: str = "threads") -> None:
    """Capture the output of tasks this process runs from now on (idempotent), unless
    :data:`ENV_SWITCH` is ``0``."""
    global mode, _fd_file
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    with _lock:
        if kind == "fd" and _fd_file is None:
            _fd_file = FdFile()
        mode = kind
        _install_streams_and_router()


def uninstall() -> None:
    """Stop capturing; ``sys.stdout``/``sys.stderr`` are given back unless replaced since."""
    global mode
    with _lock:
        mode = None
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            while isinstance(stream, RoutedStream):
                stream = stream.original
                setattr(sys, name, stream)
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(_router)


class capturing:  # noqa: N801 - used as a context manager, like contextlib's
    """Around one task's run: its output to its own capture, flushed at the end."""

    __slots__ = ("capture", "ident")

    def __init__(self, task: Any, request: Any) -> None:
        self.capture: TaskCapture | None = None
        if mode is None or request.called_directly or request.is_eager:
            return
        captures = getattr(task, "captures_output", None)  # a shipped cell's stand-in: its app's class says
        if not (captures if captures is not None else getattr(task.app.Task, "captures_output", False)):
            return
        ident = threading.get_ident()
        if ident in active:
            return  # a task run inside another one's run: the outer one keeps the output
        backend = task.backend  # a property of some cost: read once
        if not task_logs.supported(backend):
            return
        self.ident = ident
        self.capture = TaskCapture(backend, request.id, _fd_file if mode == "fd" else None)

    def __enter__(self) -> TaskCapture | None:
        capture = self.capture
        if capture is None:
            return None
        if capture.fd_file is None:
            if not isinstance(sys.stdout, RoutedStream) or not isinstance(sys.stderr, RoutedStream):
                _install_streams_and_router()  # replaced since (a cell's redirect): route again
        else:
            capture.fd_file.begin()
        active[self.ident] = capture
        flusher.ensure()
        return capture

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        capture = self.capture
        if capture is None:
            return
        active.pop(self.ident, None)
        if capture.fd_file is not None:
            capture.fd_file.end()
        capture.flush(final=True, failed=exc_type is not None and exc_type.__name__ not in ("Retry", "Ignore"))


def flush_running() -> None:
    """Store now what the task running in this thread wrote so far: before it stores its own end
    state (``update_state(state="FAILURE")``), so a display that sees it ended finds its logs."""
    capture = active.get(threading.get_ident())
    if capture is not None:
        capture.flush()


class _Flusher:
    """One daemon thread per process: new output of running tasks to the backend every
    :data:`~celerynb.workers.task_logs.FLUSH_EVERY` s; it ends when no task ran for a while."""

    IDLE_TICKS = 20

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def ensure(self) -> None:
        """Called per task: the thread clears ``self.thread`` as it ends, a fork clears it in the
        child, so one attribute read says it runs (no ``is_alive()`` nor ``getpid()`` per task)."""
        if self.thread is not None:
            return
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="celerynb-log-flusher", daemon=True)
                self.thread.start()

    def _forked(self) -> None:
        self.thread, self.lock = None, threading.Lock()  # the parent's thread is not in the child

    def _run(self) -> None:
        idle = 0
        pause = threading.Event()
        while idle < self.IDLE_TICKS:
            pause.wait(task_logs.FLUSH_EVERY)
            running = list(active.values())
            idle = 0 if running else idle + 1
            for capture in running:
                capture.flush()
        with self.lock:
            if self.thread is threading.current_thread():
                self.thread = None
        if active:  # a task began as this thread was ending
            self.ensure()


flusher = _Flusher()


def on_worker_process_init(**_: Any) -> None:
    """A prefork child: one task at a time, captured at the file-descriptor level."""
    install("fd")


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """A ``celery worker`` process: solo runs one task at a time (fds); threads need per-thread
    capture; prefork's children set theirs up themselves. In-kernel workers install their own."""
    from celery.apps.worker import Worker

    if not isinstance(sender, Worker):
        return
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") or ""
    if pool.endswith(".solo"):
        install("fd")
    elif not pool.endswith(".prefork"):
        install("threads")
