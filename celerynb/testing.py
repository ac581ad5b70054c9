"""A pytest plugin: test Celery tasks against a real, private server with in-process workers.

Enable it in the project's top-level ``conftest.py``::

    pytest_plugins = ["celerynb.testing"]

or on the command line / in ``addopts``: ``pytest -p celerynb.testing``.

Fixtures:
    celerynb_cluster: one :class:`celerynb.LocalCluster` per test session (an embedded
        ``valkey-server`` on 127.0.0.1 with a random password, and in-process workers),
        stopped at the end of the session with nothing left running.
    celerynb_app: the Celery app pointed at that cluster, in the mode the test asks for.
    celerynb_user_app: override it to test your own app (default: celerynb's app).
    celerynb_cluster_options: override it to change :class:`~celerynb.LocalCluster` options
        (default ``{"workers": 1, "pool": "threads", "concurrency": 4}``).

Marker ``@pytest.mark.celerynb("eager")`` (or ``"pool"``, the default) chooses per test,
class or module whether tasks run on the cluster's workers or synchronously in the test.

Why opt-in and not auto-loaded through a ``pytest11`` entry point: an auto-loaded plugin runs
in every pytest session of every environment where celerynb is installed, and notebook
environments run many unrelated test suites. Importing this module imports ``celerynb`` and
so Celery (about 0.1 s and 300 modules), and its fixtures and marker would appear in every
project. Celery 5 made its own pytest plugin opt-in for the same reasons. One explicit line
also tells a reader of the test suite where the fixtures come from. This module itself stays
cheap and side-effect free at import (it imports only pytest; the cluster starts when a test
first asks for it), so it can be listed in ``pytest_plugins`` at no cost to tests that do not
use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

MODES = ("pool", "eager")
_EAGER_KEYS = ("task_always_eager", "task_eager_propagates", "task_store_eager_result")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        'celerynb(mode): "pool" (default) runs tasks on the celerynb_cluster workers, '
        '"eager" runs them synchronously in the test (celerynb.testing).',
    )


def marker_mode(node: pytest.Item) -> str:
    """The mode the closest ``celerynb`` marker asks for (``pool`` when unmarked)."""
    marker = node.get_closest_marker("celerynb")
    if marker is None:
        return "pool"
    mode = marker.kwargs.get("mode", marker.args[0] if marker.args else "pool")
    if mode not in MODES:
        raise pytest.UsageError(
            f"@pytest.mark.celerynb({mode!r}) on {node.nodeid}: mode must be 'pool' or 'eager'."
        )
    return mode


class ClusterHandle:
    """The session's cluster, restarted if a test stopped it (``celerynb.stop()``)."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.app = app
        self.options = dict(options)
        self.cluster: Any = None
        self.server_pids: set[int] = set()
        self._saved_urls: tuple[Any, Any] | None = None

    def ensure(self) -> Any:
        """The running cluster, started (on a private embedded server) when needed."""
        from celerynb.cluster import apps, local, server
        from celerynb.workers import urls

        if self.cluster is not None and self.cluster.running:
            return self.cluster
        running = local.current()
        if running is not None and running.app is not self.app:
            raise RuntimeError(
                "celerynb_cluster: another LocalCluster already runs in this process; stop it first."
            )
        if running is None:
            if self.app is not apps.current_app() and self._saved_urls is None:
                self._saved_urls = (self.app.conf.broker_url, self.app.conf.result_backend)
            # Always a private server: never the CI's CELERY_BROKER_URL or a `celerynb up` cluster.
            shared = server.shared_server()
            urls.apply(self.app, shared.url, shared.url, "embedded")
            running = local.LocalCluster(self.app, **self.options).start()
        self.cluster = running
        if running.server is not None and running.server.pid:
            self.server_pids.add(running.server.pid)
        return running

    def close(self, timeout: float = 10.0) -> None:
        """Stop the cluster and wait until every server process it started has exited."""
        from celerynb.cluster import server
        from celerynb.workers import urls

        if self.cluster is not None and self.cluster.running:
            self.cluster.stop()
        server.stop_shared_server()
        if self._saved_urls is not None:
            urls.apply(self.app, self._saved_urls[0], self._saved_urls[1], "explicit")
            urls.forget(self.app)
            self._saved_urls = None
        left = _wait_gone(self.server_pids, timeout)
        if left:
            raise RuntimeError(f"celerynb_cluster: server process(es) {sorted(left)} still running after stop.")


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in pids if _alive(pid)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is gone for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.fixture(scope="session")
def celerynb_user_app() -> Any:
    """The Celery app under test; override this fixture to return your own app."""
    from celerynb.cluster.apps import current_app

    return current_app()


@pytest.fixture(scope="session")
def celerynb_cluster_options() -> dict[str, Any]:
    """Options for :class:`celerynb.LocalCluster`; override to change them."""
    return {"workers": 1, "pool": "threads", "concurrency": 4}


@pytest.fixture(scope="session")
def _celerynb_handle(celerynb_user_app: Any, celerynb_cluster_options: dict[str, Any]) -> Iterator[ClusterHandle]:
    handle = ClusterHandle(celerynb_user_app, celerynb_cluster_options)
    yield handle
    handle.close()


@pytest.fixture(scope="session")
def celerynb_cluster(_celerynb_handle: ClusterHandle) -> Any:
    """A private :class:`celerynb.LocalCluster` for the session: embedded server + in-process workers."""
    return _celerynb_handle.ensure()


@pytest.fixture
def celerynb_app(request: pytest.FixtureRequest, _celerynb_handle: ClusterHandle) -> Iterator[Any]:
    """The app pointed at the session's cluster, in the mode of the test's ``celerynb`` marker.

    Both modes use the private server (so results and ``update_state`` work the same way and
    the CI's own broker settings never leak in); in ``eager`` mode tasks run in the test.
    """
    mode = marker_mode(request.node)
    _celerynb_handle.ensure()
    app = _celerynb_handle.app
    saved = {key: app.conf[key] for key in _EAGER_KEYS}
    app.conf.task_always_eager = mode == "eager"
    if mode == "eager":
        app.conf.task_eager_propagates = True
        app.conf.task_store_eager_result = True
    try:
        yield app
    finally:
        for key, value in saved.items():
            app.conf[key] = value
