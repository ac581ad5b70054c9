"""celerynb: Celery in Jupyter, with an embedded server, in-kernel workers and live progress.

Public API (see the README): :class:`LocalCluster`, :func:`start`, :func:`stop`,
:func:`current`, :func:`connect`, :func:`use`, :func:`restore`, :func:`progress`, :class:`TaskTable`, :func:`track`,
:func:`wait`, :func:`gather`, :func:`map`, and the IPython extension (``%load_ext celerynb``).

Worker processes import this package too, so the display parts (IPython, ipywidgets) load
lazily, on first use of their names.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .apps import restore, use
from .cluster import LocalCluster, current, start, stop
from .connect import connect

__all__ = [
    "__version__", "LocalCluster", "start", "stop", "current", "connect", "use", "restore",
    "progress", "TaskTable", "track", "wait", "gather", "map",
]

_LAZY = {
    "progress": ("celerynb.display.progress", "progress"),
    "TaskTable": ("celerynb.display.table", "TaskTable"),
    "track": ("celerynb.workers.track", "track"),
    "wait": ("celerynb.results", "wait"),
    "gather": ("celerynb.results", "gather"),
    "map": ("celerynb.bulk", "map"),
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
    from .extension import load

    load(ip)


def unload_ipython_extension(ip) -> None:  # noqa: ANN001
    """``%unload_ext celerynb``."""
    from .extension import unload

    unload(ip)
