"""What the monitor does when something breaks under the tasks it follows: the server restarted
without persistence, the app moved to another server, a worker process died mid-task.

A mixin of :class:`~celerynb.tracking.monitor.TaskMonitor`: it works on the monitor's
snapshots under its lock and applies pseudo-states (``LOST``, ``WORKER_LOST``) that Celery
never writes, so that displays end, or say why they wait, instead of showing a stale state.
"""

from __future__ import annotations

import logging

from celery import states

from celerynb.tracking.backend_source import BATCH, BackendSource
from celerynb.tracking.snapshot import LOST, LOST_INFO, MOVED_INFO, WORKER_LOST, replace_state
from celerynb.workers import cells

logger = logging.getLogger("celerynb.monitor")


class FaultReactions:
    """Fault handling for the monitor (uses its ``_lock``, ``_snapshots``, ``_unfinished``, ``_apply``)."""

    def _after_restart(self, source: BackendSource) -> None:
        """Mark tasks LOST whose messages a restarted, non-persistent server cannot have kept,
        or whose server the app no longer uses."""
        with self._lock:
            gone = [t for t in self._unfinished if self._origin.get(t, source.url) != source.url]
        for tid in gone:
            self._apply(replace_state(self._snapshots[tid], LOST, MOVED_INFO), None, force=True)
        run = source.server_run()
        if run is None:
            return
        previous, self._server_run = self._server_run, (source.url, run[0])
        # Another URL is another server (a new cluster), not a restart of this one.
        if previous is None or previous != (source.url, previous[1]) or previous[1] == run[0]:
            return
        if cells.ship_again(self.app):  # a worker may be waiting for a record the restart lost
            logger.info("celerynb: the server restarted; this kernel's cell tasks were stored again")
        if run[1] or not source.holds_broker():
            return
        with self._lock:
            waiting = [t for t in self._unfinished if self._snapshots[t].state in (states.PENDING, states.RECEIVED)]
        for start in range(0, len(waiting), BATCH):
            chunk = waiting[start:start + BATCH]
            for tid, payload in zip(chunk, source.read(chunk), strict=True):
                if payload is None:  # nothing written since the restart: the message is gone
                    self._apply(replace_state(self._snapshots[tid], LOST, LOST_INFO), None, force=True)
        logger.warning("celerynb: the server restarted without persistence; %d queued task(s) were lost", len(waiting))

    def _check_workers(self) -> None:
        """Show "worker lost" on the tasks of a local-cluster worker process that died."""
        from celerynb.cluster.local import current

        cluster = current()
        if cluster is None or cluster.app is not self.app or not cluster.processes:
            return
        for loss in cluster.check_workers():
            with self._lock:
                running = [t for t in self._unfinished if self._snapshots[t].worker == loss.hostname
                           and self._snapshots[t].state not in (states.PENDING, states.RECEIVED)]
            requeued = set(loss.requeued)
            for tid in running:
                what = "requeued" if tid in requeued else "waiting for a worker to take it again"
                info = {"status": f"worker {loss.hostname} died: {what}"}
                self._apply(replace_state(self._snapshots[tid], WORKER_LOST, info), None, force=True)
