"""Tasks of celerynb's app for worker processes in tests/test_task_logs.py (``--include _log_tasks``).

Only the worker processes import this module: the tests send these tasks by name.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from celerynb.workers.celery_app import app


@app.task(name="logtests.noisy")
def noisy(x: str) -> str:
    """One of each: print, a logging record, stderr, os.write to fd 1, the C library's printf."""
    print(f"printed {x}")
    logging.getLogger("logtests").warning("logged %s", x)
    sys.stderr.write(f"stderr {x}\n")
    os.write(1, f"fd one {x}\n".encode())
    libc = ctypes.CDLL(None)
    libc.printf(b"libc printf %s\n", x.encode())
    libc.fflush(None)
    return x


@app.task(name="logtests.flood")
def flood(lines: int) -> int:
    """Numbered lines, far more than the cap keeps."""
    for i in range(lines):
        print(f"line {i:06d} " + "x" * 90)
    return lines


@app.task(name="logtests.wait_for_release", bind=True)
def wait_for_release(self, key: str) -> str:
    """Prints, then blocks until the test pushes to ``key`` (a Redis list): still running meanwhile."""
    print("before the release", flush=True)
    client = self.backend.client
    if client.blpop([key], timeout=60) is None:
        raise TimeoutError("never released")
    print("after the release")
    return "released"
