"""Point an app at its broker the first time its configuration is read.

Connected to ``app.on_configure`` so that importing the app, loading the extension or
defining tasks starts nothing: the embedded server starts when the app is first used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celerynb import _compat, config
from celerynb.config import reachability

NO_BROKER = (
    "celerynb: no broker is configured for this worker. Start one with `celerynb up --detach` "
    "(workers then find it automatically), or set CELERY_BROKER_URL=redis://HOST:6379/0."
)

# Set by the kernel side (celerynb.cluster.server): the URL of the embedded server, started on
# first use. Worker processes never start one, so this package needs no cluster code.
_embedded_url: Callable[[], str] | None = None


def provide_embedded_server(url_of_started_server: Callable[[], str]) -> None:
    """Let apps with nothing configured fall back to an embedded server (a kernel or a script)."""
    global _embedded_url
    _embedded_url = url_of_started_server


def source_of(app: Celery) -> str | None:
    """Where the app's URLs came from: env, discovery, embedded, explicit, or None (not yet)."""
    return getattr(app, "_celerynb_source", None)


_without_embedded = 0


@contextmanager
def without_starting_a_server() -> Iterator[None]:
    """Read the app (its configuration, its tasks) without falling back to the embedded server:
    an app with nothing configured stays unresolved, and its first submission resolves it."""
    global _without_embedded
    _without_embedded += 1
    try:
        yield
    finally:
        _without_embedded -= 1


def on_configure(sender: Celery, **_: object) -> None:
    """``app.on_configure`` receiver.

    Celery's signal dispatch logs and swallows exceptions, after which a ``celery worker``
    would quietly run on Celery's default ``amqp://localhost``: in a celery command the
    missing broker ends the command instead, with one clear message.
    """
    try:
        resolve_into(sender)
    except ImproperlyConfigured as exc:
        if config.in_celery_command():
            raise SystemExit(f"Error: {exc}") from None
        raise


def resolve_into(app: Celery) -> None:
    """Fill in broker and backend unless they were set explicitly."""
    if source_of(app) is not None:
        return
    found = config.resolve()
    if found is None and _without_embedded:
        return  # a look at the app (``%celery tasks``) starts no server: the first use resolves it
    if found is None:
        if config.in_celery_command() or _embedded_url is None:
            raise ImproperlyConfigured(NO_BROKER)
        url = _embedded_url()
        found = config.Resolved(url, url, "embedded")
    elif not config.in_celery_command():
        reachability.check(found.broker_url)
        if found.result_backend and found.result_backend != found.broker_url:
            reachability.check(found.result_backend)
    apply(app, found.broker_url, found.result_backend, found.source)


def apply(app: Celery, broker_url: str, result_backend: str | None, source: str) -> None:
    """Point ``app`` at new URLs and drop every connection and backend made for the old ones."""
    if app.configured and app.conf.broker_url:
        detach_results(app)
        try:
            old = app.connection_for_write()
        except Exception:  # noqa: BLE001 - a URL kombu cannot even parse has no pools to drop
            old = None
        if old is not None:
            _drop_pools(old)
    # Marked first: the first write can load the configuration, and its on_configure receiver
    # must then see the app as resolved, not start an embedded server of its own.
    app._celerynb_source = source
    app.conf.broker_url = broker_url
    app.conf.result_backend = result_backend or None
    for name, value in (("CELERY_BROKER_URL", broker_url), ("CELERY_RESULT_BACKEND", result_backend)):
        # Celery lets these environment variables win over any setting.
        if os.environ.get(name) and value and os.environ[name] != value:
            os.environ[name] = value
    _compat.drop_app_connection_caches(app)


def detach_results(app: Celery) -> None:
    """Let go of the result backend's pub/sub subscriptions before its server goes away.

    Every ``AsyncResult`` unsubscribes when garbage-collected; against a stopped server that
    retries, then prints "Retry limit exceeded" from ``__del__`` (at exit, in a later cell).
    """
    pubsub = _compat.take_result_pubsub(_compat.result_backend_if_created(app))
    if pubsub is None:
        return
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - the server may be gone already
        pass


def _drop_pools(connection: object) -> None:
    """Close and forget kombu's process-wide pools for a URL, so that a server coming back
    at the same URL gets fresh connections instead of a closed pool."""
    for pool in _compat.drop_kombu_pools(connection):
        try:
            pool.force_close_all()
        except Exception:  # noqa: BLE001 - the old server may be gone already
            pass


def mark(app: Celery, source: str) -> None:
    """Record where an app's URLs come from without changing them (a user's own settings: ``app``)."""
    app._celerynb_source = source


def is_managed(app: Celery) -> bool:
    """True for apps whose URLs celerynb resolves (celerynb's own app)."""
    return bool(getattr(app, "_celerynb_managed", False))


def forget(app: Celery) -> None:
    """Let the next configuration read resolve the URLs again (after a cluster stopped)."""
    if getattr(app, "_celerynb_source", None) is not None:
        app._celerynb_source = None
