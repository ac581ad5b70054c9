"""Celery's events on while a cluster monitor watches, off again after it.

Task events cost a publish each on the hot path (``task-sent`` in every ``.delay()``, three per task
on a worker), so celerynb's app and the workers it starts leave them off until someone watches. A
monitor turns ``task_send_sent_event`` on for this process's app while it runs, asks the workers to
send task events (``enable_events``, as Flower does), and at its end asks again to stop only the
workers that it turned on: those that were sending already, or that someone else enabled, keep theirs.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from celery import Celery

logger = logging.getLogger(__name__)

_watching: Counter[int] = Counter()  # id(app) -> monitors running in this process
_saved_sent_event: dict[int, bool] = {}
_lock = threading.Lock()


class EventSwitch:
    """What one monitor turned on, to turn off at its end."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.enabled_by_us: set[str] = set()  # worker hostnames that answered "task events enabled"
        self._on = False

    def on(self) -> None:
        """This process's app sends ``task-sent`` events from now on (until the last monitor stops)."""
        with _lock:
            if self._on:
                return
            self._on = True
            key = id(self.app)
            if _watching[key] == 0:
                _saved_sent_event[key] = bool(self.app.conf.task_send_sent_event)
                self.app.conf.task_send_sent_event = True
            _watching[key] += 1

    def enable_workers(self, timeout: float = 0.5) -> None:
        """``enable_events`` to every worker; remembers which ones this call switched on."""
        try:
            replies = self.app.control.broadcast("enable_events", reply=True, timeout=timeout) or []
        except Exception:  # noqa: BLE001 - no worker, or a broker hiccup: the next round tries again
            logger.debug("celerynb cluster monitor: enable_events failed", exc_info=True)
            return
        for reply in replies:
            for hostname, answer in reply.items():
                if isinstance(answer, dict) and answer.get("ok") == "task events enabled":
                    self.enabled_by_us.add(hostname)

    def off(self) -> None:
        """Undo :meth:`on` and stop the task events this monitor turned on."""
        with _lock:
            if self._on:
                self._on = False
                key = id(self.app)
                _watching[key] -= 1
                if _watching[key] <= 0:
                    del _watching[key]
                    self.app.conf.task_send_sent_event = _saved_sent_event.pop(key, False)
        if self.enabled_by_us:
            destination, self.enabled_by_us = sorted(self.enabled_by_us), set()
            try:
                self.app.control.broadcast("disable_events", destination=destination)
            except Exception:  # noqa: BLE001 - the broker is gone: so are the workers' events
                logger.debug("celerynb cluster monitor: disable_events failed", exc_info=True)
