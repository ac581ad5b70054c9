"""Worker logs go to a file while a local cluster runs: a background worker must never print
into a cell (its output would land in whichever cell runs at the time).

That is Celery's own ``celery`` logger, and every record logged by a worker's threads or while
a task runs in this process (the in-kernel workers), whatever its logger: a task's
``logging.getLogger("mine")`` or kombu's would otherwise reach a cell as a red stderr box
through Python's last-resort handler.
"""

from __future__ import annotations

import logging
import os

from celery import current_task

from celerynb import _compat

_FORMAT = "[%(asctime)s: %(levelname)s/%(threadName)s] %(name)s: %(message)s"


#: Celery's per-task INFO lines ("Received task", "Task ... succeeded in"): a formatted record and
#: a file write per task on every in-kernel round trip; quiet unless ``CELERYNB_WORKER_LOGLEVEL``
#: says INFO or DEBUG. The rest of Celery's INFO (connected, ready) and tasks' loggers stay.
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def per_task_log_level() -> int:
    name = os.environ.get("CELERYNB_WORKER_LOGLEVEL", "").strip().upper() or "WARNING"
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.WARNING


def _from_a_worker(record: logging.LogRecord) -> bool:
    """Logged by a worker's thread (consumer, pool, celerynb's helpers) or by a task it runs
    (not by a task called in the cell, nor an eager one)."""
    if record.threadName and record.threadName.startswith("celerynb-"):
        return True
    task = _compat.unproxied(current_task)
    if task is None:
        return False
    request = task.request
    return not (request.called_directly or request.is_eager)


class _NotFromTasks(logging.Filter):
    """On the root logger's own handlers: what a task logs goes to the worker log instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _from_a_worker(record)


class _TaskRecords(logging.Handler):
    """On the root logger: a task's records to the worker log file; any other record as Python
    would treat it with this handler absent (the last-resort handler, when the root has no other)."""

    def __init__(self, file_handler: logging.Handler) -> None:
        super().__init__()
        self.file_handler = file_handler

    def handle(self, record: logging.LogRecord) -> bool:
        if _from_a_worker(record):
            self.file_handler.handle(record)
        elif all(h is self or getattr(h, "celerynb_passive", False) for h in logging.root.handlers) and logging.lastResort and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # handle() does it all
        pass


class WorkerLogFile:
    """The ``celery`` logger and tasks' records routed to ``path`` at INFO (per task: :data:`PER_TASK_LOGGERS`); :meth:`detach` puts
    everything back as it was."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handler: logging.Handler | None = None
        self._saved: tuple[int, bool] | None = None
        self._tasks: _TaskRecords | None = None
        self._filter = _NotFromTasks()
        self._saved_per_task: list[tuple[logging.Logger, int]] = []

    def attach(self) -> WorkerLogFile:
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(logging.INFO)
        celery_logger = logging.getLogger("celery")
        self._saved = (celery_logger.level, celery_logger.propagate)
        celery_logger.addHandler(handler)
        celery_logger.setLevel(logging.INFO)
        self._saved_per_task = [(lg, lg.level) for lg in map(logging.getLogger, PER_TASK_LOGGERS)]
        for per_task, _ in self._saved_per_task:
            per_task.setLevel(per_task_log_level())
        celery_logger.propagate = False
        self._handler = handler
        for existing in logging.root.handlers:
            existing.addFilter(self._filter)
        self._tasks = _TaskRecords(handler)
        logging.root.addHandler(self._tasks)
        return self

    def detach(self) -> None:
        celery_logger = logging.getLogger("celery")
        if self._tasks is not None:
            logging.root.removeHandler(self._tasks)
            self._tasks = None
        for existing in logging.root.handlers:
            existing.removeFilter(self._filter)
        if self._handler is not None:
            celery_logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        for per_task, level in self._saved_per_task:
            per_task.setLevel(level)
        self._saved_per_task = []
        if self._saved is not None:
            celery_logger.setLevel(self._saved[0])
            celery_logger.propagate = self._saved[1]
            self._saved = None
