"""celerynb: Celery in Jupyter, with an embedded server, in-kernel workers and live progress.

Public API (see the README): :class:`LocalCluster`, :func:`start`, :func:`stop`,
:func:`connect`, the IPython extension (``%load_ext celerynb``).
"""

from __future__ import annotations

from ._version import __version__
from .cluster import LocalCluster, current, start, stop
from .connect import connect

__all__ = ["__version__", "LocalCluster", "start", "stop", "current", "connect"]


def load_ipython_extension(ip) -> None:  # noqa: ANN001 - IPython's signature
    """``%load_ext celerynb``."""
    from .extension import load

    load(ip)


def unload_ipython_extension(ip) -> None:  # noqa: ANN001
    """``%unload_ext celerynb``."""
    from .extension import unload

    unload(ip)
