"""Point the app at external infrastructure: a Redis or RabbitMQ URL, or ``auto``.

Everything that can be checked is checked before anything is stopped: the URLs' shape and
scheme, then that the broker and the backend answer and accept the password, then the cluster
options. Only then is the running cluster stopped and the app switched. Should the new workers
still fail to start, the app's URLs and the previous cluster are put back; the embedded server
of the previous cluster runs on until the switch has succeeded, so its URL and the messages
queued on it survive a failed connect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from celerynb import config
from celerynb.cluster import apps, server
from celerynb.cluster.local import ClusterError, LocalCluster, current, lock
from celerynb.config import reachability, validation
from celerynb.workers import urls

logger = logging.getLogger("celerynb")


def connect(url: str = "auto", *, backend: str | None = None, workers: bool = True,
            app: Celery | None = None, **cluster_options: Any) -> LocalCluster | None:
    """Use the broker at ``url`` (``auto``: the cluster of a running ``celerynb up``).

    Broker and backend are checked first (a bad URL fails within 2 s with
    :class:`~celerynb.InvalidURL` or :class:`~celerynb.BrokerUnreachable`, naming the URL with
    its password masked, and nothing is changed). Then a running local cluster is stopped. With
    ``workers`` (the default), workers in this process consume from the new broker too; the
    cluster is returned.

    Args:
        url: ``redis://...``, ``amqp://...`` or ``auto``.
        backend: result backend URL; defaults to ``url`` for Redis, none for RabbitMQ.
        workers: start in-process workers on the new broker.
        app: the app to point (default: the app in use).
        cluster_options: passed on to :class:`~celerynb.LocalCluster`.
    """
    app = app or apps.current_app()
    source = "explicit"
    if url == "auto":
        record = config.read_discovery()
        if record is None:
            raise reachability.BrokerUnreachable(
                f"No running `celerynb up` found (looked for {config.discovery_path()}). "
                "Start one with `celerynb up --detach`, or pass a URL."
            )
        url = backend = record["url"]
        source = "discovery"
    if backend is None:
        backend = url if isinstance(url, str) and url.startswith(("redis://", "rediss://")) else ""
    check(url, backend)
    # Bad options fail here, before the switch (the constructor validates them).
    cluster = LocalCluster(app, **cluster_options) if workers else None
    with lock:
        return _switch(app, url, backend, source, cluster)


#: Seconds a server that accepts connections but never answers gets (a connect fails in < 2 s).
CHECK_TIMEOUT = 1.5


def check(url: str, backend: str | None) -> None:
    """Every check a connect makes before it changes anything (shape, scheme, answer, password)."""
    validation.check_broker_url(url)
    if backend:
        validation.check_backend_url(backend)
    reachability.check(url, CHECK_TIMEOUT)
    if backend and backend != url:
        reachability.check(backend, CHECK_TIMEOUT)


@dataclass(frozen=True)
class _Urls:
    """An app's URLs before a connect, to put back if it fails (None: resolve again)."""

    broker_url: str | None
    result_backend: str | None
    source: str | None

    @classmethod
    def of(cls, app: Celery) -> _Urls | None:
        if urls.is_managed(app) and urls.source_of(app) is None:
            return None  # reading the settings would start an embedded server
        return cls(app.conf.broker_url, app.conf.result_backend, urls.source_of(app))


def _switch(app: Celery, url: str, backend: str, source: str, cluster: LocalCluster | None) -> LocalCluster | None:
    before = _Urls.of(app)
    previous = current()
    kept = previous.server if previous is not None else None
    if previous is not None:
        previous.stop(keep_server=True)
    # No configuration read before apply(): with nothing configured, it would start the
    # embedded server only to leave it unused.
    urls.apply(app, url, backend, source)
    try:
        if cluster is not None:
            cluster.start()
    except Exception as exc:
        _put_back(app, before, previous)
        reason = " ".join(config.mask_text(str(exc), url, backend).split()) or type(exc).__name__
        raise ClusterError(
            f"Workers on {config.mask_url(url)} did not start ({reason}); the previous setup is back."
        ) from None
    if kept is not None and not _served_by(kept, url, backend):
        if previous.app is not app:
            urls.detach_results(previous.app)
            urls.forget(previous.app)
        server.stop_shared_server()
    return cluster


def _served_by(embedded: server.EmbeddedServer, *targets: str) -> bool:
    """True when one of ``targets`` is the embedded server itself (then it must keep running)."""
    own = urlsplit(embedded.url)
    for target in targets:
        try:
            parts = urlsplit(target)
            if parts.port == own.port and parts.hostname in (own.hostname, "localhost"):
                return True
        except ValueError:
            continue
    return False


def _put_back(app: Celery, before: _Urls | None, previous: LocalCluster | None) -> None:
    if before is None:
        urls.forget(app)
    else:
        urls.apply(app, before.broker_url or "", before.result_backend, before.source or "app")
        if before.source is None:
            urls.forget(app)
    if previous is not None:
        try:
            LocalCluster(previous.app, **previous.options()).start()
        except Exception as exc:  # noqa: BLE001 - the connect error is the one to report
            logger.warning("celerynb: the previous cluster did not start again: %s", config.mask_text(str(exc)))
