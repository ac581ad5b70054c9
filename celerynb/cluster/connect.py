"""Point the app at external infrastructure: a Redis or RabbitMQ URL, or ``auto``."""

from __future__ import annotations

from celery import Celery

from celerynb import config
from celerynb.cluster import apps, session
from celerynb.cluster.local import LocalCluster
from celerynb.config import reachability
from celerynb.workers import urls


def connect(url: str = "auto", *, backend: str | None = None, workers: bool = True,
            app: Celery | None = None, **cluster_options) -> LocalCluster | None:
    """Use the broker at ``url`` (``auto``: the cluster of a running ``celerynb up``).

    The broker is checked first (an error within seconds, naming the URL with its password
    masked). A running local cluster is stopped. With ``workers`` (the default), workers in
    this process consume from the new broker too; the cluster is returned.

    Args:
        url: ``redis://...``, ``amqp://...`` or ``auto``.
        backend: result backend URL; defaults to ``url`` for Redis, none for RabbitMQ.
        workers: start in-process workers on the new broker.
        app: the app to point (default: celerynb's app).
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
        backend = url if url.startswith(("redis://", "rediss://")) else ""
    reachability.check(url)
    if backend and backend != url:
        reachability.check(backend)
    session.stop()
    # No configuration read before apply(): with nothing configured, it would start the
    # embedded server only to leave it unused.
    urls.apply(app, url, backend, source)
    if workers:
        return LocalCluster(app, **cluster_options).start()
    return None
