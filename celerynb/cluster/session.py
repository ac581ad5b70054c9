"""The cluster of this process as users reach it: get-or-create, start on the first task,
and switching the app in use (which stops a cluster that serves another app)."""

from __future__ import annotations

import atexit
import os
from typing import Any

from celery import Celery, signals

from celerynb import _compat, config
from celerynb.cluster import apps
from celerynb.cluster.local import ClusterError, LocalCluster, current, lock
from celerynb.workers import base, urls


def start(**options: Any) -> LocalCluster:
    """Get the running cluster or start one with ``options`` (see :class:`LocalCluster`)."""
    with lock:
        running = current()
        if running is not None:
            if options.get("persistent") and running.server is not None and not running.server.persistent:
                raise ClusterError(
                    "A cluster without persistence is already running: stop it first with celerynb.stop() "
                    "(what it has queued is lost), then celerynb.start(persistent=True)."
                )
            return running
        return LocalCluster(**options).start()


def stop() -> None:
    """Stop the running cluster, if any."""
    with lock:
        running = current()
        if running is not None:
            running.stop()


def use(app: Celery | str, *, local: bool = False) -> Celery:
    """Make ``app`` (an app or an import path) the one in use; ``local`` = embedded server.

    It becomes Celery's current app too, so that ``@shared_task`` tasks are sent by it. A
    running local cluster of another app is stopped first (its workers consume that app's
    queues). Returns the app.
    """
    with apps.lock:
        if isinstance(app, str):
            app = apps.find(app)
        # After the import (which made the project current, as `import proj` does) and before
        # celerynb's own app may be created (which makes itself current).
        before = _compat.celery_current_apps()
        running = current()
        if running is not None and running.app is not app:
            running.stop()
        apps.set_current_app(app)
        if local:
            apps.make_local(app, celery_current=before)
            _register_exit_restore()
        elif app is not apps.celerynb_app() and urls.source_of(app) is None:
            urls.mark(app, "app")
        apps.make_celery_current(app)
        return app


def restore(app: Celery | None = None) -> Celery:
    """Undo ``use(..., local=True)``: the project's own broker and backend again, and Celery's
    current app what it was before that ``use``."""
    with apps.lock:
        app = app or apps.current_app()
        if apps.saved_settings(app) is None:
            raise ValueError(f"The app {app.main!r} was not switched to the local server: nothing to restore.")
        running = current()
        if running is not None and running.app is app:
            running.stop()
        apps.put_back(app)
        return app


def _restore_all() -> None:
    for app in apps.saved_apps():
        try:
            restore(app)
        except Exception:  # noqa: BLE001 - interpreter exit
            pass


_exit_restore_registered = False


def _register_exit_restore() -> None:
    global _exit_restore_registered
    if not _exit_restore_registered:
        _exit_restore_registered = True
        atexit.register(_restore_all)


# -- on-demand start -------------------------------------------------------------------------
def _on_submit(app: Celery) -> None:
    """Submit hook: with no broker configured, the first task starts the embedded cluster."""
    running = current()
    if running is not None and running.app is app:
        running.check_server()
        return
    if app.current_worker_task is not None or config.in_celery_command():
        return
    if urls.source_of(app) is None:  # never resolved, or the cluster behind it was stopped
        urls.resolve_into(app)
    if app.conf.task_always_eager:
        return
    if urls.source_of(app) == "embedded" and _auto_start_enabled():
        with lock:
            if current() is None:
                LocalCluster(app).start()


def on_publish(sender: Any = None, **_: Any) -> None:
    """``before_task_publish``: the same on-demand start for a user's app switched to local."""
    app = apps.current_app()
    if app is apps.celerynb_app() or urls.source_of(app) != "embedded" or not _auto_start_enabled():
        return
    if app.current_worker_task is not None or sender not in app.tasks:
        return
    with lock:
        if current() is None:
            LocalCluster(app).start()


def _auto_start_enabled() -> bool:
    return os.environ.get("CELERYNB_AUTOSTART", "1") not in ("0", "false", "no")


base.submit_hooks.append(_on_submit)
signals.before_task_publish.connect(on_publish, weak=False, dispatch_uid="celerynb-autostart")
