"""The request class of celerynb's tasks: a revoke with ``terminate=True`` stops a thread's task too."""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from celerynb.workers import stopping


class StoppableRequest(Request):
    """Celery's request, whose ``revoke(terminate=True)`` on celerynb's thread pools stops the task
    (Celery can only kill a process there) and stores REVOKED once it has stopped, not before:
    meanwhile the displays say "cancelling"."""

    def terminate(self, pool: Any, signal: Any = None) -> None:
        if getattr(pool, "stops_threads", False) and self.time_start:
            stopping.request_stop([self.id])
            return
        super().terminate(pool, signal)
