"""Which Celery app this kernel works with: celerynb's own, or the user's existing project.

This module holds the choice and the project's saved settings; switching (which may stop a
running cluster) is :func:`celerynb.cluster.session.use`. ``find`` locates an app the way
``celery -A`` does.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from celerynb import _compat
from celerynb.cluster import server
from celerynb.workers import urls

_current: Celery | None = None
_saved: dict[int, tuple[Celery, dict[str, Any]]] = {}
lock = threading.RLock()
_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


class AppNotFound(LookupError):
    """No Celery app at the given import path."""


def celerynb_app() -> Celery:
    from celerynb.workers.celery_app import app

    return app


def current_app() -> Celery:
    """The app in use in this process (celerynb's own unless ``use()`` said otherwise)."""
    return _current if _current is not None else celerynb_app()


def set_current_app(app: Celery) -> None:
    """Record ``app`` as the one in use (celerynb's own app clears the choice)."""
    global _current
    _current = None if app is celerynb_app() else app


def make_celery_current(app: Celery) -> None:
    """Make ``app`` Celery's current and default app, in every thread.

    ``@shared_task`` tasks (the Django layout) and ``celery.current_app`` look the app up at
    call time: while a user's app is in use they must find it, not celerynb's own.
    """
    app.set_current()
    app.set_default()


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


def import_path(app: Celery) -> str | None:
    """What ``celery -A`` needs to import ``app`` in a worker process (None if unknown)."""
    if app is celerynb_app():
        return "celerynb.workers.celery_app"
    return getattr(app, "_celerynb_import_path", None)


def make_local(app: Celery, celery_current: tuple[Celery | None, Celery | None] | None = None) -> None:
    """Point ``app`` at the embedded server, saving its own settings for :func:`put_back`.

    ``celery_current``: Celery's current and default app before the switch (what
    :func:`put_back` makes current again), default: as they are now.
    """
    if id(app) not in _saved:
        app.conf.broker_url  # noqa: B018 - load the project's configuration before saving it
        _saved[id(app)] = (app, {
            "broker_url": app.conf.get("broker_url"),
            "result_backend": app.conf.get("result_backend"),
            "source": urls.source_of(app),
            "env": {name: os.environ.get(name) for name in _ENV},
            "celery_current": celery_current or _compat.celery_current_apps(),
        })
    embedded = server.shared_server()
    for name in _ENV:  # Celery lets these win over any setting: the project's must step aside
        os.environ.pop(name, None)
    urls.apply(app, embedded.url, embedded.url, "embedded")


def saved_settings(app: Celery) -> dict[str, Any] | None:
    """The project's own settings while ``app`` is switched to the embedded server."""
    entry = _saved.get(id(app))
    return dict(entry[1]) if entry else None


def saved_apps() -> list[Celery]:
    return [entry[0] for entry in _saved.values()]


def put_back(app: Celery) -> None:
    """Give ``app`` its own broker, backend and environment again (after :func:`make_local`)."""
    entry = _saved.pop(id(app), None)
    if entry is None:
        raise ValueError(f"The app {app.main!r} was not switched to the local server: nothing to restore.")
    saved = entry[1]
    for name, value in saved["env"].items():
        if value is not None:
            os.environ[name] = value
    urls.apply(app, saved["broker_url"], saved["result_backend"], saved["source"] or "app")
    if saved["source"] is None and app is celerynb_app():
        urls.forget(app)
    if app in _compat.celery_current_apps():  # unless the user made another app current since
        _compat.set_celery_current_apps(*saved["celery_current"])
