"""Where the broker and result backend are: one resolution for kernels, scripts and workers.

Order (first match wins):

1. ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` (``REDIS_URL`` stands for both);
2. the discovery file written by a running ``celerynb up``;
3. nothing: the caller starts the embedded server on demand.

This module imports neither Celery nor IPython, so that everything can stand on it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PASSWORD_IN_URL = re.compile(r"(?P<scheme>[a-z0-9+]+://)(?P<user>[^:@/]*):(?P<password>[^@/]+)@", re.I)

DISCOVERY_FILENAME = "celerynb-cluster.json"


def mask_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for reprs and logs."""
    if not url:
        return ""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(url))


def mask_text(text: str) -> str:
    """Mask every URL password inside a longer text (error messages, log lines)."""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


@dataclass(frozen=True)
class Resolved:
    """The outcome of resolution: URLs plus where they came from (``env``, ``discovery``, ``embedded``...)."""

    broker_url: str
    result_backend: str
    source: str

    def __repr__(self) -> str:
        return f"Resolved(broker_url={mask_url(self.broker_url)!r}, source={self.source!r})"


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


def from_environment() -> Resolved | None:
    env = os.environ
    broker = env.get("CELERY_BROKER_URL") or env.get("REDIS_URL")
    backend = env.get("CELERY_RESULT_BACKEND") or env.get("REDIS_URL")
    if not broker and not backend:
        return None
    broker = broker or backend
    if not backend:
        backend = broker if broker.startswith(("redis://", "rediss://")) else ""
    return Resolved(broker, backend, "env")


def resolve() -> Resolved | None:
    """Environment, then discovery; None means "start the embedded server"."""
    found = from_environment()
    if found:
        return found
    record = read_discovery()
    if record:
        return Resolved(record["url"], record["url"], "discovery")
    return None


def in_celery_command() -> bool:
    """True inside ``celery worker/beat/...``, where no private server may be started."""
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    return prog in ("celery", "__main__.py") and any(
        cmd in sys.argv for cmd in ("worker", "beat", "inspect", "flower", "events", "control", "status")
    )


_TRUE = ("1", "true", "yes", "on")
#: Seconds a progress wait blocks, in non-interactive runs, when the caller gave no timeout.
NONINTERACTIVE_WAIT_TIMEOUT = 600.0


def noninteractive() -> bool:
    """True in CI (``CI=true``, set by GitHub Actions, GitLab, ...) or with ``CELERYNB_NONINTERACTIVE=1``.

    Displays are then text only and deterministic, and waits are bounded, so that a notebook run
    by nbval, nbmake, papermill or nbconvert neither hangs nor differs between runs. An explicit
    ``CELERYNB_NONINTERACTIVE=0`` wins over ``CI`` (e.g. a browser test inside CI).
    """
    own = os.environ.get("CELERYNB_NONINTERACTIVE", "").strip().lower()
    if own:
        return own in _TRUE
    return os.environ.get("CI", "").strip().lower() in _TRUE


def default_wait_timeout() -> float | None:
    """Timeout for a wait that was given none: ``CELERYNB_WAIT_TIMEOUT`` seconds, else
    :data:`NONINTERACTIVE_WAIT_TIMEOUT` in non-interactive runs, else no limit."""
    value = os.environ.get("CELERYNB_WAIT_TIMEOUT", "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"CELERYNB_WAIT_TIMEOUT={value!r} is not a number of seconds, e.g. 300.") from None
        return seconds if seconds > 0 else None
    return NONINTERACTIVE_WAIT_TIMEOUT if noninteractive() else None
