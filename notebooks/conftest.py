"""nbval configuration for the tutorial notebooks: ``pytest --nbval notebooks/``.

* Kernels get a private ``CELERYNB_RUNTIME_DIR`` (discovery file, documents, logs), so a
  ``celerynb up`` of yours is never touched, and ``CELERYNB_NONINTERACTIVE=1`` (the
  deterministic text twin of progress widgets, which nbval compares).
* The sanitize file is used unless ``--nbval-sanitize-with`` names another one.
* At the end, any process still running with our runtime directory in its environment (a
  server, a worker, supervisord...) fails the run and is killed: nothing a notebook starts
  may outlive it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_RUNTIME = tempfile.mkdtemp(prefix="celerynb-nbval-")
os.environ["CELERYNB_RUNTIME_DIR"] = _RUNTIME
os.environ.setdefault("CELERYNB_NONINTERACTIVE", "1")


def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if hasattr(option, "nbval_sanitize_with") and option.nbval_sanitize_with is None:
        option.nbval_sanitize_with = str(HERE / "nbval_sanitize.cfg")


def _survivors() -> list[tuple[int, str]]:
    """Processes (other than this one) whose environment names our runtime directory."""
    marker = f"CELERYNB_RUNTIME_DIR={_RUNTIME}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), cmd.strip()))
        except OSError:
            continue
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "workerinput", None) is None and getattr(session.config.option, "numprocesses", None):
        shutil.rmtree(_RUNTIME, ignore_errors=True)  # pytest-xdist's controller: each worker checks its notebooks
        return
    deadline = time.monotonic() + 10  # kernels take a moment to exit after their last cell
    left = _survivors()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _survivors()
    for pid, _cmd in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(_RUNTIME, ignore_errors=True)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  pid {pid}: {cmd[:160]}" for pid, cmd in left)
        if reporter is not None:
            reporter.write_line(f"notebooks left processes running (killed now):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
