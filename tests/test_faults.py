"""Faults: unreachable or wrong-password brokers, a missing server binary, stopping under load."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import RABBITMQ_URL, REDIS_URL, reachable, wait_for

import celerynb
from celerynb.cluster import server
from celerynb.config import reachability as connectivity
from celerynb.workers import tasks

FAST = 5.0  # seconds within which a bad broker must be reported

_SUBMIT = textwrap.dedent(
    """
    import json, time
    from celerynb.workers.tasks import analyze_content
    start = time.monotonic()
    try:
        analyze_content.delay("some words")
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["elapsed"] = time.monotonic() - start
    print(json.dumps(outcome))
    """
)


def _submit_in_subprocess(**env: str) -> dict:
    """A fresh interpreter that submits one task, configured only through its environment."""
    full = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", _SUBMIT], capture_output=True, text=True, timeout=60, env=full)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _closed_port() -> int:
    return server.free_port()


@pytest.fixture(autouse=True)
def _resolve_afresh():
    """Each test resolves the broker from scratch (an earlier ``connect`` is sticky by design)."""
    from celerynb.workers.celery_app import app
    from celerynb.workers.urls import forget

    celerynb.stop()
    forget(app)
    yield
    forget(app)


# -- unreachable or refusing brokers ---------------------------------------------------------
def test_unreachable_broker_from_environment_fails_fast_naming_masked_url():
    port = _closed_port()
    outcome = _submit_in_subprocess(CELERY_BROKER_URL=f"redis://:hunter2secret@127.0.0.1:{port}/0")
    assert outcome["error"] == "BrokerUnreachable"
    assert f"redis://:***@127.0.0.1:{port}/0" in outcome["message"]
    assert "hunter2secret" not in outcome["message"]
    assert outcome["elapsed"] < FAST


def test_connect_to_unreachable_url_fails_fast(app):
    port = _closed_port()
    url = f"redis://user:hunter2secret@127.0.0.1:{port}/3"
    start = time.monotonic()
    with pytest.raises(connectivity.BrokerUnreachable) as info:
        celerynb.connect(url)
    assert time.monotonic() - start < FAST
    message = str(info.value)
    assert f"redis://user:***@127.0.0.1:{port}/3" in message and "hunter2secret" not in message
    assert "Connection refused" in message and ".." not in message
    assert celerynb.current() is None


def test_wrong_password_on_embedded_server_fails_fast(app):
    private = server.EmbeddedServer().start()
    try:
        url = f"redis://:not-the-password@127.0.0.1:{private.port}/0"
        start = time.monotonic()
        with pytest.raises(connectivity.BrokerUnreachable) as info:
            celerynb.connect(url)
        assert time.monotonic() - start < FAST
        message = str(info.value)
        assert f"redis://:***@127.0.0.1:{private.port}/0" in message and "not-the-password" not in message
        assert "password" in message.lower()
        # The right password works.
        connectivity.check(private.url)
    finally:
        private.stop()


def test_wrong_password_from_environment_in_subprocess():
    private = server.EmbeddedServer().start()
    try:
        outcome = _submit_in_subprocess(REDIS_URL=f"redis://:not-the-password@127.0.0.1:{private.port}/0")
    finally:
        private.stop()
    assert outcome["error"] == "BrokerUnreachable" and outcome["elapsed"] < FAST
    assert "redis://:***@" in outcome["message"] and "not-the-password" not in outcome["message"]


@pytest.mark.external
def test_wrong_password_on_machine_redis_fails_fast(app):
    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
    # That Redis may run without a password (any password is then accepted): a user it does
    # not know is a wrong credential in every configuration.
    url = REDIS_URL.format(db=12).replace("redis://", "redis://celerynb-nobody:not-the-password@")
    start = time.monotonic()
    with pytest.raises(connectivity.BrokerUnreachable) as info:
        celerynb.connect(url)
    assert time.monotonic() - start < FAST
    assert "redis://celerynb-nobody:***@127.0.0.1:6379/12" in str(info.value) and "not-the-password" not in str(info.value)


@pytest.mark.external
def test_wrong_credentials_on_machine_rabbitmq_fail_fast(app):
    if not reachable("127.0.0.1", 5672):
        pytest.skip("RabbitMQ on 127.0.0.1:5672 is not reachable")
    url = RABBITMQ_URL.replace("guest:guest", "guest:not-the-password")
    start = time.monotonic()
    with pytest.raises(connectivity.BrokerUnreachable) as info:
        celerynb.connect(url, backend=None)
    assert time.monotonic() - start < FAST
    assert "amqp://guest:***@127.0.0.1:5672//" in str(info.value) and "not-the-password" not in str(info.value)


# -- the embedded server binary ----------------------------------------------------------------
def test_missing_binary_on_first_task_names_the_fix():
    outcome = _submit_in_subprocess(CELERYNB_SERVER_BINARY="/nonexistent/valkey-server")
    assert outcome["error"] == "ServerError"
    assert "binary is missing (/nonexistent/valkey-server)" in outcome["message"]
    assert "CELERY_BROKER_URL=redis://HOST:6379/0" in outcome["message"] and "celerynb.connect(" in outcome["message"]


def test_binary_failing_at_start_says_so_and_the_cluster_recovers(app, monkeypatch, tmp_path):
    broken = tmp_path / "valkey-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: cannot allocate the memory it needs' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CELERYNB_SERVER_BINARY", str(broken))
    server.stop_shared_server()  # one may have been started on demand by an earlier import or test
    with pytest.raises(server.ServerError) as info:
        celerynb.start()
    message = str(info.value)
    assert "exited at start" in message and "cannot allocate the memory" in message and "CELERY_BROKER_URL" in message
    assert celerynb.current() is None
    monkeypatch.delenv("CELERYNB_SERVER_BINARY")
    # Fixed: the next attempt starts a working cluster.
    assert tasks.analyze_content.delay("back again").get(timeout=30)["words"] == 2
    assert celerynb.current() is not None


# -- stopping under load, restarting -------------------------------------------------------------
def _wait_running(result) -> None:
    wait_for(lambda: result.state in ("STARTED", "PROGRESS"), timeout=20, message="the task to start")


def test_stop_while_task_runs_is_bounded_reports_it_and_restarts(app, caplog):
    cluster = celerynb.start()
    busy = tasks.long_process.delay([0] * 30, delay=0.1)  # about 3 s of work
    _wait_running(busy)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="celerynb"):
        cluster.stop(timeout=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"stop took {elapsed:.1f} s"
    assert cluster.abandoned == [busy.id]
    assert busy.id in caplog.text and "still running" in caplog.text
    assert not cluster.running and celerynb.current() is None

    again = celerynb.start()
    assert again is not cluster
    assert tasks.analyze_content.delay("after the stop").get(timeout=30)["words"] == 3
    assert tasks.long_process.delay([1, 2], delay=0.01).get(timeout=30)["processed"] == 2
    # The abandoned task's thread ends later, on its own; the new cluster must not notice.
    from celery.worker import state

    wait_for(lambda: busy.id not in {req.id for req in state.active_requests}, timeout=30,
             message="the abandoned task to end")
    assert tasks.analyze_content.delay("still consuming").get(timeout=30)["words"] == 2


def test_stop_lets_a_short_running_task_finish(app):
    cluster = celerynb.start()
    short = tasks.long_process.delay([0] * 4, delay=0.1)
    _wait_running(short)
    cluster.stop(timeout=10)
    assert cluster.abandoned == []


def test_restart_in_one_process_several_times(app):
    cluster = celerynb.LocalCluster(app, workers=2)
    pids = set()
    for round_ in range(3):
        cluster.start() if round_ == 0 else cluster.restart()
        pids.add(cluster.server.pid)
        assert all(w.alive for w in cluster.workers) and len(cluster.workers) == 2
        assert tasks.analyze_content.delay("round " * (round_ + 1)).get(timeout=30)["words"] == round_ + 1
    cluster.stop()
    assert len(pids) == 3 and not cluster.running
    assert celerynb.current() is None
