"""``celerynb up | status | down`` and plain ``celery`` commands that find the cluster on their own."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import no_broker_env as _env
from conftest import process_gone as _gone
from conftest import run_without_broker as run
from conftest import wait_for

from celerynb import config
from celerynb.workers.urls import NO_BROKER

CELERYNB = [sys.executable, "-m", "celerynb"]
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("celerynb"))
CELERY = [sys.executable, "-m", "celery", "-A", "celerynb.workers.celery_app"]


def _tree(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {pid} | {child.pid for child in proc.children(recursive=True)}


@pytest.fixture
def no_cluster():
    """Nothing is up before the test; whatever the test brought up is brought down after it."""
    assert config.read_discovery() is None, "a cluster from another test is still up"
    yield
    if config.read_discovery() is not None:
        run(CELERYNB + ["down"], timeout=60)


def test_up_status_ping_down(no_cluster):
    up = run([CONSOLE_SCRIPT, "up", "--detach", "--workers", "1"])
    assert up.returncode == 0, up.stderr
    record = config.read_discovery()
    assert record is not None and record["ready"] is True and len(record["workers"]) == 1
    password = record["url"].split(":")[2].split("@")[0]
    assert len(password) >= 16
    assert "redis://:***@127.0.0.1:" in up.stdout and password not in up.stdout + up.stderr

    # The discovery file holds the password: this user only.
    path = config.discovery_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0

    pids = _tree(record["up_pid"])
    assert record["server_pid"] in pids and record["workers"][0]["pid"] in pids

    status = run(CELERYNB + ["status"])
    assert status.returncode == 0, status.stderr
    assert "redis://:***@127.0.0.1:" in status.stdout and password not in status.stdout + status.stderr
    assert record["workers"][0]["name"] in status.stdout and "high-priority: 0" in status.stdout

    # A plain celery command, no environment variable: it finds the cluster by itself.
    ping = run(CELERY + ["inspect", "ping", "--timeout", "5"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert f"{record['workers'][0]['name']}: OK" in ping.stdout and "pong" in ping.stdout

    again = run(CELERYNB + ["up", "--detach"])
    assert again.returncode == 1 and "already running" in again.stderr and "celerynb down" in again.stderr
    assert password not in again.stdout + again.stderr
    assert config.read_discovery()["up_pid"] == record["up_pid"]

    down = run(CELERYNB + ["down"], timeout=60)
    assert down.returncode == 0, down.stderr
    assert "stopped redis://:***@" in down.stdout and password not in down.stdout
    assert not path.exists()
    assert not Path(record["log_dir"]).exists()
    wait_for(lambda: all(_gone(pid) for pid in pids), timeout=10, message=f"processes {pids} to exit")


def test_down_and_status_with_nothing_running(no_cluster):
    down = run(CELERYNB + ["down"])
    assert down.returncode == 0 and "No celerynb cluster is running" in down.stdout
    status = run(CELERYNB + ["status"])
    assert status.returncode == 1 and "celerynb up --detach" in status.stdout


def test_stale_discovery_file_is_ignored(no_cluster):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    config.write_discovery({"url": "redis://:pw@127.0.0.1:1/0", "server_pid": dead.pid, "up_pid": dead.pid})
    try:
        assert config.read_discovery() is None
        status = run(CELERYNB + ["status"])
        assert status.returncode == 1 and "No celerynb cluster is running" in status.stdout
    finally:
        config.remove_discovery()


def test_plain_celery_worker_finds_the_cluster_and_runs_tasks(no_cluster, app):
    """`celerynb up` with no workers, then `celery -A celerynb.workers.celery_app worker` by hand."""
    from celerynb.workers import tasks, urls

    assert run(CELERYNB + ["up", "--detach"]).returncode == 0
    record = config.read_discovery()
    name = f"bare{os.getpid()}@localhost"
    worker = subprocess.Popen(
        CELERY + ["worker", "--pool", "solo", "--hostname", name, "--loglevel", "WARNING",
                  "--without-heartbeat", "--without-mingle", "--without-gossip"],
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        urls.forget(app)
        urls.resolve_into(app)
        assert urls.source_of(app) == "discovery" and app.conf.broker_url == record["url"]
        wait_for(lambda: worker.poll() is not None or app.control.ping(destination=[name], timeout=0.3),
                 timeout=30, message="the plain celery worker to answer a ping")
        assert worker.poll() is None, worker.stderr.read()
        result = tasks.process_document.delay("welcome", {"format": "text"})
        assert result.get(timeout=30)["document_id"] == "welcome"
        assert result.worker == name
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        worker.stderr.close()
        urls.forget(app)
        assert run(CELERYNB + ["down"], timeout=60).returncode == 0


@pytest.mark.parametrize("command", [["worker", "--pool", "solo"], ["inspect", "ping"], ["beat"]])
def test_celery_command_with_nothing_running_says_no_broker(no_cluster, command):
    done = run(CELERY + command, timeout=60)
    assert done.returncode != 0
    assert NO_BROKER in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_celery_console_script_with_global_options_is_a_celery_command(no_cluster):
    """The ``celery`` entry point with options before the subcommand: still a celery command,
    so it says there is no broker instead of starting a private server."""
    script = str(Path(sys.executable).with_name("celery"))
    done = run([script, "--app", "celerynb.workers.celery_app", "--quiet", "inspect", "ping"], timeout=60)
    assert done.returncode != 0
    assert NO_BROKER in done.stderr, done.stdout + done.stderr


def test_foreground_up_stops_cleanly_on_sigint(no_cluster):
    proc = subprocess.Popen(CELERYNB + ["up"], env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        record = wait_for(lambda: (config.read_discovery() or {}).get("ready") and config.read_discovery(),
                          timeout=30, message="the foreground cluster to be ready")
        assert record["up_pid"] == proc.pid
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "ready" in out and record["url"].split("@")[0].split(":")[2] not in out + err
    assert not config.discovery_path().exists()
    wait_for(lambda: _gone(record["server_pid"]), timeout=10, message="the server to exit")


def test_up_without_server_binary_names_the_fix(no_cluster):
    done = run(CELERYNB + ["up", "--detach"], CELERYNB_SERVER_BINARY="/nonexistent/valkey-server")
    assert done.returncode == 1
    assert "binary is missing" in done.stderr and "CELERY_BROKER_URL" in done.stderr
    assert config.read_discovery() is None


def test_help_of_module_and_console_script():
    for cmd in (CELERYNB, [CONSOLE_SCRIPT]):
        done = run(cmd + ["--help"])
        assert done.returncode == 0 and "up" in done.stdout and "down" in done.stdout


def test_up_with_beat_then_down(no_cluster):
    up = run(CELERYNB + ["up", "--detach", "--beat"])
    assert up.returncode == 0, up.stderr
    record = config.read_discovery()
    beat_pid = record["beat_pid"]
    assert f"beat pid {beat_pid}" in up.stdout and not _gone(beat_pid)
    assert run(CELERYNB + ["down"], timeout=60).returncode == 0
    wait_for(lambda: _gone(beat_pid) and _gone(record["server_pid"]), timeout=10, message="beat and server to exit")
