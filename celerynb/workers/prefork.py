"""Celery's prefork pool, whose terminated task's child is killed if SIGTERM does not end it.

``revoke(terminate=True)`` sends the child SIGTERM. A task that handles or ignores it (a library
that installs its own handler, a child stuck where signals wait) would run on; here the child
gets SIGKILL ``KILL_AFTER`` seconds later if it still lives. Billiard then replaces the child and
Celery stores REVOKED, as for any terminated task. Used by ``worker_pool`` in
:mod:`celerynb.workers.settings` (``celery worker --pool prefork``, the default).
"""

from __future__ import annotations

import os
import signal as signals
import threading
from typing import Any

from celery.concurrency.prefork import TaskPool as CeleryPreforkPool

#: Seconds between SIGTERM and SIGKILL for a terminated task's child.
KILL_AFTER = 2.0


class TaskPool(CeleryPreforkPool):
    """Prefork with SIGKILL after SIGTERM (see the module docstring)."""

    def on_start(self) -> None:
        super().on_start()
        send = self.terminate_job  # Celery sets billiard's own here, on the instance

        def terminate_job(pid: int, signal: Any = None) -> None:
            send(pid, signal)
            if signal in (None, signals.SIGTERM):
                timer = threading.Timer(KILL_AFTER, self._kill_if_alive, (pid,))
                timer.daemon = True
                timer.start()

        self.terminate_job = terminate_job

    def _kill_if_alive(self, pid: int) -> None:
        if pid not in (self.info.get("processes") or []):
            return  # ended (and maybe replaced): nothing of ours to kill
        try:
            os.kill(pid, signals.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
