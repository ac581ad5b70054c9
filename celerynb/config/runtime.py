"""The runtime directory: the discovery file, logs and server data live there, readable by this user only."""

from __future__ import annotations

import os
from pathlib import Path


def runtime_dir() -> Path:
    """Directory for the discovery file and logs; ``CELERYNB_RUNTIME_DIR`` overrides it.

    Like Jupyter's connection files, it defaults to Jupyter's runtime directory.
    """
    override = os.environ.get("CELERYNB_RUNTIME_DIR")
    if override:
        path = Path(override)
    else:
        try:
            from jupyter_core.paths import jupyter_runtime_dir

            path = Path(jupyter_runtime_dir())
        except ImportError:  # pragma: no cover - jupyter_core comes with ipykernel
            path = Path.home() / ".local" / "share" / "jupyter" / "runtime"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


PERSISTENT_DIRNAME = "celerynb-data"


def persistent_data_dir(name: str) -> Path:
    """The one data directory of persistent servers called ``name`` (``embedded``, ``up``).

    Stable, so that the next persistent start finds the messages the last one kept (a fresh
    temporary directory per start would keep nothing), and private, since it holds every message.
    """
    root = runtime_dir() / PERSISTENT_DIRNAME
    root.mkdir(mode=0o700, exist_ok=True)
    path = root / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path
