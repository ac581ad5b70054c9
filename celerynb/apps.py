"""Which Celery app this kernel works with: celerynb's own, or the user's existing project.

``use("proj.celery:app")`` finds an app the way ``celery -A`` does; magics, workers, displays
and awaitables then act on it. ``local=True`` points it at the embedded server for development
without editing the project's settings; :func:`restore` (or kernel exit) puts them back.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from celery import Celery

from . import server
from .workers import urls

_current: Celery | None = None
_saved: dict[int, tuple[Celery, dict[str, Any]]] = {}
_lock = threading.RLock()
_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


class AppNotFound(LookupError):
    """No Celery app at the given import path."""


def celerynb_app() -> Celery:
    from .workers.celery_app import app

    return app


def current_app() -> Celery:
    """The app in use in this process (celerynb's own unless :func:`use` said otherwise)."""
    return _current if _current is not None else celerynb_app()


def find(path: str) -> Celery:
    """``proj``, ``proj.celery`` or ``proj.celery:app``: the lookup rules of ``celery -A``."""
    from celery.app.utils import find_app
    from celery.utils.imports import import_from_cwd

    try:
        app = find_app(path, imp=import_from_cwd)
    except ModuleNotFoundError as exc:
        raise AppNotFound(f"Cannot import {exc.name!r} while looking for the app {path!r}: is it on sys.path?") from None
    except Exception as exc:  # noqa: BLE001 - find_app raises several kinds for "not there"
        raise AppNotFound(f"No Celery app found at {path!r} ({exc}); use 'module', 'module.celery' or 'module:app'.") from None
    if not isinstance(app, Celery):
        raise AppNotFound(f"{path!r} is a {type(app).__name__}, not a Celery app.")
    app._celerynb_import_path = path
    return app


def use(app: Celery | str, *, local: bool = False) -> Celery:
    """Make ``app`` (an app or an import path) the current one; ``local`` = embedded server.

    A running local cluster of another app is stopped first (its workers consume that app's
    queues). Returns the app.
    """
    from . import cluster

    global _current
    with _lock:
        if isinstance(app, str):
            app = find(app)
        running = cluster.current()
        if running is not None and running.app is not app:
            running.stop()
        _current = None if app is celerynb_app() else app
        if local:
            _make_local(app)
        elif app is not celerynb_app() and urls.source_of(app) is None:
            urls.mark(app, "app")
        return app


def _make_local(app: Celery) -> None:
    if id(app) not in _saved:
        app.conf.broker_url  # noqa: B018 - load the project's configuration before saving it
        _saved[id(app)] = (app, {
            "broker_url": app.conf.get("broker_url"),
            "result_backend": app.conf.get("result_backend"),
            "source": urls.source_of(app),
            "env": {name: os.environ.get(name) for name in _ENV},
        })
        _register_exit_restore()
    embedded = server.shared_server()
    for name in _ENV:  # Celery lets these win over any setting: the project's must step aside
        os.environ.pop(name, None)
    urls.apply(app, embedded.url, embedded.url, "embedded")


def restore(app: Celery | None = None) -> Celery:
    """Undo ``use(..., local=True)``: the project's own broker and backend again."""
    from . import cluster

    with _lock:
        app = app or current_app()
        entry = _saved.pop(id(app), None)
        if entry is None:
            raise ValueError(f"The app {app.main!r} was not switched to the local server: nothing to restore.")
        saved = entry[1]
        running = cluster.current()
        if running is not None and running.app is app:
            running.stop()
        for name, value in saved["env"].items():
            if value is not None:
                os.environ[name] = value
        urls.apply(app, saved["broker_url"], saved["result_backend"], saved["source"] or "app")
        if saved["source"] is None and app is celerynb_app():
            urls.forget(app)
        return app


def saved_settings(app: Celery) -> dict[str, Any] | None:
    entry = _saved.get(id(app))
    return dict(entry[1]) if entry else None


def _restore_all() -> None:
    for _app, _entry in list(_saved.values()):
        try:
            restore(_app)
        except Exception:  # noqa: BLE001 - interpreter exit
            pass


_exit_registered = False


def _register_exit_restore() -> None:
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        atexit.register(_restore_all)
