"""``binder/start`` brings up the local cluster before the container's command, as on Binder.

repo2docker runs ``binder/start <command...>``; the script must start ``celerynb up --detach
--workers 1`` and then ``exec`` the command, which finds the cluster through the discovery
file. Each test uses its own ``CELERYNB_RUNTIME_DIR`` and stops the cluster by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
VENV_BIN = Path(sys.executable).parent

# The command a Binder user's notebook effectively runs: find the cluster, send a task, and
# report which worker ran it and its own process id (to check that start exec'd it).
PROBE = """
import json, os
import celerynb
from celerynb import config
from celerynb.workers.celery_app import app
from celerynb.workers.tasks import process_document

record = config.read_discovery()
celerynb.connect("auto", workers=False)
output = process_document.delay("welcome", {"format": "text"}).get(timeout=60)
stats = app.control.inspect(timeout=3).stats() or {}
print(json.dumps({
    "pid": os.getpid(),
    "found": record is not None,
    "title": output["title"],
    "workers": {name: s["total"] for name, s in stats.items()},
    "broker": config.mask_url(app.conf.broker_url),
}))
"""


def _env(runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")}
    env["CELERYNB_RUNTIME_DIR"] = str(runtime)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `celerynb` as the start script calls it
    return env


def _record(runtime: Path) -> dict | None:
    try:
        return json.loads((runtime / "celerynb-cluster.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _pids(record: dict | None) -> list[int]:
    if not record:
        return []
    return [p for p in [record.get("up_pid"), record.get("server_pid"), record.get("beat_pid")]
            + [w.get("pid") for w in record.get("workers", [])] if p]


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "runtime"
    path.mkdir(mode=0o700)
    started: list[int] = []
    yield path, started
    record = _record(path)
    started += _pids(record)
    if record is not None:
        subprocess.run([sys.executable, "-m", "celerynb", "down"], env=_env(path), capture_output=True, timeout=60)
    for pid in started:  # whatever `down` missed
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_binder_files_install_this_package_and_are_executable():
    requirements = (BINDER / "requirements.txt").read_text()
    post_build = (BINDER / "postBuild").read_text()
    start = (BINDER / "start").read_text()
    assert "pip install" in post_build and "-e ." in post_build, "postBuild must install this repository"
    assert "celerynb" not in [line.split("=")[0].split(">")[0].strip() for line in requirements.splitlines()], (
        "requirements.txt must not install celerynb from PyPI: postBuild installs this commit"
    )
    assert os.access(BINDER / "postBuild", os.X_OK) and os.access(BINDER / "start", os.X_OK)
    assert 'exec "$@"' in start and "celerynb up --detach --workers 1" in start


@pytest.mark.slow
def test_start_brings_up_the_cluster_then_execs_the_command(runtime):
    path, started = runtime
    env = _env(path)
    proc = subprocess.Popen([str(BINDER / "start"), sys.executable, "-c", PROBE], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"binder/start did not finish: {err[-2000:]}")
    record = _record(path)
    started += _pids(record)
    assert proc.returncode == 0, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])

    assert report["pid"] == proc.pid, "start must exec the command (same process), not run it as a child"
    assert report["found"], "the command did not find the cluster's discovery file"
    assert report["title"] == "Welcome to celerynb"
    assert record is not None and record["ready"] and len(record["workers"]) == 1
    worker = record["workers"][0]["name"]
    assert report["workers"] == {worker: {"tasks.process_document": 1}}, "the task must run on the `celerynb up` worker"
    assert report["broker"].startswith("redis://:***@127.0.0.1:")
    password = record["url"].split(":")[2].split("@")[0]
    assert password not in out and password not in err

    # The cluster outlives the command (the notebook server), until `celerynb down`.
    assert all(_alive(pid) for pid in _pids(record))
    down = subprocess.run([sys.executable, "-m", "celerynb", "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert _record(path) is None
    assert not [pid for pid in _pids(record) if _alive(pid)]


@pytest.mark.slow
def test_start_still_runs_the_command_when_the_cluster_cannot_start(runtime):
    path, started = runtime
    env = _env(path)
    first = subprocess.run([str(BINDER / "start"), sys.executable, "-c", "print('first')"], env=env,
                           capture_output=True, text=True, timeout=180)
    started += _pids(_record(path))
    assert first.returncode == 0 and first.stdout.strip().endswith("first"), first.stderr
    # A second start finds a cluster already running: `celerynb up` refuses, the command runs anyway.
    second = subprocess.run([str(BINDER / "start"), sys.executable, "-c", "print('second')"], env=env,
                            capture_output=True, text=True, timeout=180)
    assert second.returncode == 0 and second.stdout.strip().endswith("second")
    assert "already running" in second.stderr and "binder/start" in second.stderr
