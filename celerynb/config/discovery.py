"""The discovery file of a running ``celerynb up``: how kernels, scripts and workers find its cluster.

It holds the server's password, so it is written with user-only permissions. A file outlives
its cluster when ``celerynb up`` is killed or the machine reboots (the runtime directory is on
disk), and its PIDs may then belong to strangers. So "is it running" is never answered from a
PID: ``celerynb up`` holds an exclusive lock on ``celerynb-cluster.lock`` for as long as it
lives (the kernel releases it however the process ends), and the file records each process's
identity (:mod:`~celerynb.config.identity`), checked before anything is signalled. A file whose
cluster is gone is *stale*: every reader ignores it, and the first one removes it, saying so once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from celerynb.config.identity import is_same_process, process_identity
from celerynb.config.runtime import runtime_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: liveness falls back to the recorded identity
    fcntl = None

DISCOVERY_FILENAME = "celerynb-cluster.json"
LOCK_FILENAME = "celerynb-cluster.lock"
RUNNING, STALE, ABSENT = "running", "stale", "absent"

logger = logging.getLogger("celerynb")
_warned: set[tuple[str, Any]] = set()


class ClusterLockHeld(RuntimeError):
    """Another ``celerynb up`` holds the cluster lock of this runtime directory."""


def discovery_path() -> Path:
    return runtime_dir() / DISCOVERY_FILENAME


def lock_path() -> Path:
    return runtime_dir() / LOCK_FILENAME


def pid_alive(pid: int | None) -> bool:
    """Whether some process has this PID (any process: use :func:`record_has` to know it is ours)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the lock held by `celerynb up` ------------------------------------------------------------
def _try_lock(mode: int) -> int | None:
    """An fd holding the lock in ``mode``, or None when someone else holds it.

    Raises OSError where the lock cannot be taken at all (a read-only directory, a filesystem
    without locks); callers then rely on the recorded identities alone.
    """
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def hold_cluster_lock(timeout: float = 2.0) -> int | None:
    """Take the lock for the life of this process (``celerynb up``); returns its fd (None: no locks here).

    Readers test the lock for an instant, so a few retries ride over that; a real holder wins.
    """
    if fcntl is None:  # pragma: no cover
        return None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = _try_lock(fcntl.LOCK_EX)
        except OSError as exc:
            logger.warning("celerynb: cannot lock %s (%s); relying on process identities", lock_path(), exc)
            return None
        if fd is not None:
            return fd
        if time.monotonic() > deadline:
            raise ClusterLockHeld(
                f"another `celerynb up` is running or starting (it holds {lock_path()}). "
                "Stop it with `celerynb down`."
            )
        time.sleep(0.02)


def _lock_held() -> bool:
    """True while a ``celerynb up`` holds the lock (or when locks cannot be taken here)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = _try_lock(fcntl.LOCK_SH)
    except OSError:
        return True
    if fd is None:
        return True
    os.close(fd)  # closing releases it
    return False


# -- the record -------------------------------------------------------------------------------
def with_identities(record: dict[str, Any], *pids: int | None) -> dict[str, Any]:
    """Record the identity of each PID, so that the PID is trusted only while it is that process."""
    identities = record.setdefault("identities", {})
    for pid in pids:
        if pid:
            identities[str(pid)] = process_identity(pid)
    return record


def record_has(record: dict[str, Any], pid: int | None) -> bool:
    """True if ``pid`` still is the process the record names (never a stranger that reused it)."""
    return bool(pid) and is_same_process(pid, (record.get("identities") or {}).get(str(pid)))


def record_pids(record: dict[str, Any]) -> list[int]:
    """Every PID the record names: workers, beat, the server, ``celerynb up`` last."""
    pids = [w.get("pid") for w in record.get("workers") or [] if isinstance(w, dict)]
    pids += [record.get("beat_pid"), record.get("server_pid"), record.get("up_pid")]
    return [int(pid) for pid in pids if isinstance(pid, int) and pid > 0]


def _load() -> dict[str, Any] | None:
    try:
        record = json.loads(discovery_path().read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("url"), str) else None


def discovery_state() -> tuple[str, dict[str, Any] | None]:
    """``(RUNNING, record)``, ``(STALE, record)`` (its cluster is gone) or ``(ABSENT, None)``."""
    record = _load()
    if record is None:
        return (STALE, None) if discovery_path().exists() else (ABSENT, None)
    alive = record_has(record, record.get("up_pid")) and _lock_held()
    return (RUNNING if alive else STALE), record


def stale_reason(record: dict[str, Any] | None) -> str:
    if record is None:
        return "it is unreadable"
    pid = record.get("up_pid")
    if record_has(record, pid):
        return f"its `celerynb up` (pid {pid}) does not hold {LOCK_FILENAME}"
    if pid_alive(pid):
        return f"its `celerynb up` (pid {pid}) is gone; that PID now belongs to another process"
    return f"its `celerynb up` (pid {pid}) is gone"


def remove_stale_discovery() -> bool:
    """Remove the file if its cluster is gone; under the lock, so that a starting ``up`` is never undone."""
    fd: int | None = -1  # -1: no locks here, the identities decide
    if fcntl is not None:
        try:
            fd = _try_lock(fcntl.LOCK_EX)
        except OSError:
            pass
    if fd is None:  # a `celerynb up` holds it: the file is (or will be) its own
        return False
    try:
        # Holding the lock, no `celerynb up` runs here: whatever file is there is stale.
        if fd == -1 and discovery_state()[0] != STALE:
            return False
        discovery_path().unlink()
        return True
    except FileNotFoundError:
        return False
    finally:
        if fd != -1:
            os.close(fd)


def read_discovery() -> dict[str, Any] | None:
    """The discovery record of a running ``celerynb up``, or None (absent or stale).

    A stale file is removed, with one warning naming it, so that every later reader is quiet.
    """
    state, record = discovery_state()
    if state == RUNNING:
        return record
    if state == STALE:
        removed = remove_stale_discovery()
        key = (str(discovery_path()), (record or {}).get("up_pid"))
        if key not in _warned:
            _warned.add(key)
            action = "removed" if removed else "ignored"
            logger.warning("celerynb: %s a stale discovery file (%s): %s", action, stale_reason(record),
                           discovery_path())
    return None


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
