"""Start child processes that die with this process, even when it is killed.

A kernel that jupyter_client kills (SIGTERM/SIGKILL) runs no exit hook, which would orphan the
embedded server and worker processes. Linux's parent-death signal fixes that, but it fires
when the *thread* that forked exits, so every child is started from one daemon thread that
lives as long as the process. Detached processes (``celerynb up --detach``) must not use this.

The signal is the caller's choice: the server gets SIGTERM (it exits at once and flushes its
append-only file), a ``celery worker`` gets SIGKILL, because SIGTERM means a warm shutdown that
waits for the running task (minutes, maybe) while nobody is left to want its result; Celery's
prefork children already die with their worker (they set SIGKILL as their own parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

_PR_SET_PDEATHSIG = 1
_requests: queue.Queue[tuple[Future, list[str], dict[str, Any]]] = queue.Queue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _die_with_parent(parent_pid: int, death_signal: int) -> None:  # runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _serve() -> None:
    while True:
        future, args, kwargs = _requests.get()
        try:
            future.set_result(subprocess.Popen(args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            future.set_exception(exc)


def popen(args: list[str], *, death_signal: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` whose child gets ``death_signal`` when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(args, **kwargs)
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="celerynb-spawner", daemon=True)
            _thread.start()
    parent = os.getpid()
    kwargs["preexec_fn"] = lambda: _die_with_parent(parent, death_signal)
    future: Future = Future()
    _requests.put((future, args, kwargs))
    return future.result()
