"""Celery's logs go to a file while a local cluster runs: a background worker must never print
into a cell (its output would land in whichever cell runs at the time)."""

from __future__ import annotations

import logging

_FORMAT = "[%(asctime)s: %(levelname)s/%(threadName)s] %(name)s: %(message)s"


class WorkerLogFile:
    """The ``celery`` logger routed to ``path`` at INFO, and put back as it was by :meth:`detach`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handler: logging.Handler | None = None
        self._saved: tuple[int, bool] | None = None

    def attach(self) -> WorkerLogFile:
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(logging.INFO)
        celery_logger = logging.getLogger("celery")
        self._saved = (celery_logger.level, celery_logger.propagate)
        celery_logger.addHandler(handler)
        celery_logger.setLevel(logging.INFO)
        celery_logger.propagate = False
        self._handler = handler
        return self

    def detach(self) -> None:
        celery_logger = logging.getLogger("celery")
        if self._handler is not None:
            celery_logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self._saved is not None:
            celery_logger.setLevel(self._saved[0])
            celery_logger.propagate = self._saved[1]
            self._saved = None
