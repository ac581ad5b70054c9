"""celerynb: Celery in Jupyter, with an embedded server, in-kernel workers and live progress.

Public API (see the README): :class:`LocalCluster`, :func:`start`, :func:`stop`,
:func:`current`, :func:`connect`, :func:`use`, :func:`restore`, :func:`progress`, :class:`TaskTable`, :func:`logs`,
:func:`retry_failed`, :func:`timeline`, :func:`cancel`, :func:`track`, :func:`raise_if_cancelled`, :func:`wait`, :func:`gather`, :func:`map`, the exceptions
users catch, and the IPython extension (``%load_ext celerynb``).

Worker processes import this package too, so the display parts (IPython, ipywidgets) load
lazily, on first use of their names.
"""

from __future__ import annotations

from typing import Any

from celerynb._version import __version__
from celerynb.cluster.apps import AppNotFound
from celerynb.cluster.connect import connect
from celerynb.cluster.local import ClusterError, LocalCluster, current
from celerynb.cluster.processes import WorkerProcessError
from celerynb.cluster.server import ServerError
from celerynb.cluster.session import restore, start, stop, use
from celerynb.config.reachability import BrokerUnreachable
from celerynb.config.validation import InvalidURL
from celerynb.workers.base import ArgumentNotSerializable
from celerynb.workers.cells import CellRefused
from celerynb.workers.track import TaskCancelled, raise_if_cancelled, track

# ``map`` is reached as ``celerynb.map`` and left out of ``__all__``: ``from celerynb import *``
# must not shadow the builtin.
__all__ = [
    "__version__", "LocalCluster", "start", "stop", "current", "connect", "use", "restore",
    "progress", "TaskTable", "logs", "retry_failed", "timeline", "cancel", "track", "raise_if_cancelled", "wait", "gather",
    "AppNotFound", "ArgumentNotSerializable", "BackendNotObservable", "BrokerUnreachable", "BulkSubmitError",
    "CellRefused", "ClusterError", "InvalidURL", "NotResubmittable", "ServerError", "TaskCancelled", "WorkerProcessError",
]

_LAZY = {
    "progress": ("celerynb.display.progress", "progress"),
    "retry_failed": ("celerynb.display.actions", "retry_failed"),
    "TaskTable": ("celerynb.display.table", "TaskTable"),
    "timeline": ("celerynb.display.timeline", "timeline"),
    "cancel": ("celerynb.tracking.cancel", "cancel"),
    "logs": ("celerynb.display.task_logs", "logs"),
    "wait": ("celerynb.tracking.awaiting", "wait"),
    "gather": ("celerynb.tracking.awaiting", "gather"),
    "map": ("celerynb.bulk", "map"),
    "BulkSubmitError": ("celerynb.bulk", "BulkSubmitError"),
    "BackendNotObservable": ("celerynb.tracking.backend_source", "BackendNotObservable"),
    "NotResubmittable": ("celerynb.tracking.resubmit", "NotResubmittable"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'celerynb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ip) -> None:  # noqa: ANN001 - IPython's signature
    """``%load_ext celerynb``."""
    from celerynb.notebook.extension import load

    load(ip)


def unload_ipython_extension(ip) -> None:  # noqa: ANN001
    """``%unload_ext celerynb``."""
    from celerynb.notebook.extension import unload

    unload(ip)
