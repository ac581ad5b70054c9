"""Run the guide's ``celery ...`` commands from a tutorial notebook, as you would in a terminal.

Tutorials 1, 9, 11 and 12 start workers, beat and Flower as separate processes, the way the
guide runs them, and stop them by process id. These few helpers are what they share: written
once here (and checked by ruff like the rest of the repository) rather than pasted into each
notebook. A notebook imports them with ``from tutorial_helpers import celery, wait_for_worker,
stop``, which works because a kernel's working directory is the notebook's folder under
JupyterLab, nbval and Binder.

* ``celery(*args, name=...)`` starts ``celery -A APP ARGS`` in the background; its output goes
  to ``LOGS/<name>.log``;
* ``wait_for_worker(name, process)`` returns once worker ``name@HOST`` answers a ping;
* ``stop(process)`` shuts it down warmly (SIGTERM to its process group) and returns its exit
  status;
* ``LOGS`` is the temporary folder of those logs, ``HOST`` this machine's name (what ``%h``
  becomes in ``-n name@%h``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celerynb.workers.celery_app import app

__all__ = ["HOST", "LOGS", "celery", "stop", "wait_for_worker"]

LOGS = Path(tempfile.mkdtemp(prefix="celerynb-tutorial-"))
HOST = socket.gethostname()


def celery(*args, name, env=None, app_path="celerynb.workers.celery_app"):
    """Start `celery -A APP ARGS` in the background (its output goes to LOGS/<name>.log)."""
    cmd = [sys.executable, "-m", "celery", "-A", app_path, *args]
    log = open(LOGS / f"{name}.log", "w")
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def wait_for_worker(name, process, timeout=60):
    """Return once worker `name` answers a ping (it consumes from then on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited; see {LOGS}")
        if app.control.ping(destination=[f"{name}@{HOST}"], timeout=0.5):
            return f"{name} is ready"
    raise TimeoutError(f"{name} did not answer within {timeout} s")


def stop(process, timeout=30):
    """Warm shutdown (SIGTERM to its process group), as `kill` or supervisord would do."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    return process.returncode
