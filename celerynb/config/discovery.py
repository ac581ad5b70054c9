"""The discovery file of a running ``celerynb up``: how kernels, scripts and workers find its cluster.

It holds the server's password, so it is written with user-only permissions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celerynb.config.runtime import runtime_dir

DISCOVERY_FILENAME = "celerynb-cluster.json"


def discovery_path() -> Path:
    return runtime_dir() / DISCOVERY_FILENAME


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_discovery() -> dict[str, Any] | None:
    """The discovery record of a running ``celerynb up``, or None (absent or stale)."""
    path = discovery_path()
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not pid_alive(record.get("server_pid")):
        return None
    return record


def write_discovery(record: dict[str, Any]) -> Path:
    """Write the record readable by this user only: it holds the server password."""
    path = discovery_path()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)
    return path


def remove_discovery(expected_pid: int | None = None) -> None:
    """Remove the discovery file, only if it still belongs to ``expected_pid`` when given."""
    path = discovery_path()
    if expected_pid is not None:
        try:
            if json.loads(path.read_text()).get("up_pid") != expected_pid:
                return
        except (OSError, ValueError):
            return
    path.unlink(missing_ok=True)
