"""Temporary directories under the runtime directory, named after their owner and swept once it is gone.

A kernel killed with SIGKILL runs no cleanup, so its server's and workers' temporary files
would stay behind for ever. Each one lives in ``<runtime dir>/celerynb-scratch/KIND-PID-START-xxxx``
(the owner's PID and start time): the next start removes the directories whose owner no longer
runs, and never one of a live process, nor one whose lock a surviving child still holds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from celerynb.config.identity import process_identity, start_ticks
from celerynb.config.runtime import runtime_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: only the owner check applies
    fcntl = None

SCRATCH_DIRNAME = "celerynb-scratch"
LOCK_NAME = ".owner.lock"
_NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<pid>\d+)-(?P<start>\d+)-[^/]+$")

logger = logging.getLogger("celerynb")


def scratch_root() -> Path:
    path = runtime_dir() / SCRATCH_DIRNAME
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def make_scratch_dir(kind: str) -> Path:
    """A new private directory owned by this process (``kind``: lowercase letters, e.g. ``valkey``)."""
    if not kind.isalpha() or not kind.islower():
        raise ValueError(f"scratch kind must be lowercase letters, not {kind!r}")
    prefix = f"{kind}-{os.getpid()}-{start_ticks()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


class DirInUse(RuntimeError):
    """Another process (a server, most likely) holds the lock of this directory."""


def lock_dir(path: Path) -> int | None:
    """Lock ``path`` for as long as the returned fd is open; pass the fd to a child to share the lock.

    Raises :class:`DirInUse` when someone else holds it; None where locks do not exist (Windows).
    """
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirInUse(f"{path} is in use by another process") from None
    return fd


def owner_alive(name: str) -> bool:
    """True while the process named in a scratch directory's name runs (or when it cannot be told)."""
    match = _NAME.match(name)
    if match is None:
        return True  # not ours to judge
    pid, start = int(match["pid"]), match["start"]
    identity = process_identity(pid)
    if identity is None:
        return False
    if start == "0" or not identity.rsplit(":", 1)[-1].isdigit():
        return True  # start time unknown here: a live PID may be the owner
    return identity.rsplit(":", 1)[-1] == start


def _locked_by_someone(path: Path) -> bool:
    if fcntl is None or not (path / LOCK_NAME).exists():  # pragma: no cover - Windows
        return False
    fd = os.open(path / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep() -> list[Path]:
    """Remove the scratch directories of processes that are gone; returns what was removed."""
    try:
        entries = list(scratch_root().iterdir())
    except OSError:
        return []
    removed = []
    for path in entries:
        if not path.is_dir() or owner_alive(path.name):
            continue
        try:
            if _locked_by_someone(path):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    if removed:
        logger.info("celerynb: removed %d temporary director%s left by processes that are gone",
                    len(removed), "y" if len(removed) == 1 else "ies")
    return removed
