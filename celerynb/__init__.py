"""celerynb: Celery in Jupyter, with an embedded server, in-kernel workers and live progress.

Public API (see the README): :class:`LocalCluster`, :func:`start`, :func:`stop`,
:func:`connect`, the IPython extension (``%load_ext celerynb``).
"""

from __future__ import annotations

from ._version import __version__
from .cluster import LocalCluster, current, start, stop
from .connect import connect

__all__ = ["__version__", "LocalCluster", "start", "stop", "current", "connect"]
