"""Bring your own Celery app: a project laid out like Celery's "Next steps" guide."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import new_shell
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import celerynb
from celerynb.cluster import apps, session

PROJECTS = Path(__file__).parent / "projects"


@pytest.fixture
def ip(app, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECTS))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = new_shell()
    shell.run_line_magic("load_ext", "celerynb")
    yield shell
    celerynb.stop()
    for saved_app in apps.saved_apps():
        session.restore(saved_app)
    session.use(apps.celerynb_app())
    shell.run_line_magic("unload_ext", "celerynb")
    TerminalInteractiveShell.clear_instance()


def test_use_local_runs_project_tasks_and_cell_tasks_then_restores(ip):
    status = ip.run_line_magic("celery", "use proj --local")
    from proj.celery import app as proj_app
    from proj.tasks import add, mul, xsum

    assert "app:     proj" in repr(status)
    assert proj_app.conf.broker_url.startswith("redis://:") and "127.0.0.1" in proj_app.conf.broker_url
    # The first task starts in-kernel workers for the project's app, on the embedded server.
    assert add.delay(2, 3).get(timeout=20) == 5
    assert mul.delay(4, 5).get(timeout=20) == 20
    assert xsum.delay([1, 2, 3]).get(timeout=20) == 6
    assert celerynb.current().app is proj_app
    ip.run_cell_magic("celery_task", "", "def cube(x):\n    return x ** 3\n")
    cube = ip.user_ns["cube"]
    assert cube.app is proj_app and cube.delay(3).get(timeout=20) == 27
    shown = celerynb.progress(add.delay(1, 1), wait=True, timeout=20)
    assert shown == 2
    ip.run_line_magic("celery", "use --restore")
    assert proj_app.conf.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert proj_app.conf.result_backend == "redis://127.0.0.1:6379/12"
    assert celerynb.current() is None


def test_lookup_rules_of_celery_dash_a(ip):
    for path in ("proj", "proj.celery", "proj.celery:app"):
        assert session.use(path).main == "proj"
    with pytest.raises(UsageError, match="Cannot import 'nosuchproject'"):
        ip.run_line_magic("celery", "use nosuchproject")
    with pytest.raises(UsageError, match="nothing to restore"):
        ip.run_line_magic("celery", "use --restore")


@pytest.mark.external
def test_rabbitmq_broker_redis_backend_end_to_end(ip, rabbitmq_url, redis7_url):
    """The project's own settings: RabbitMQ broker, Redis 7 backend (db 12, flushed after)."""
    import redis

    ip.run_line_magic("celery", "use proj")
    ip.run_line_magic("celery", "start --workers 1")
    from proj.tasks import add

    running = celerynb.current()
    assert running.app.main == "proj" and running.broker_url.startswith("amqp://")
    result = add.delay(20, 22)
    assert celerynb.progress(result, wait=True, timeout=30) == 42
    assert "guest:***@127.0.0.1:5672" in repr(ip.run_line_magic("celery", "status"))
    celerynb.stop()
    redis.Redis.from_url("redis://127.0.0.1:6379/12").flushdb()


def test_app_without_result_backend_says_so(ip):
    ip.run_line_magic("celery", "use noback")
    from celery.result import AsyncResult
    from noback.celery import app as noback_app

    with pytest.raises(ValueError, match="has no result backend"):
        celerynb.progress(AsyncResult("0" * 32, app=noback_app))


def test_rpc_backend_is_explained(ip):
    from celery import Celery
    from celery.result import AsyncResult

    rpc_app = Celery("rpcapp", broker="redis://127.0.0.1:1/0", backend="rpc://")
    with pytest.raises(ValueError, match="rpc:// result backend"):
        celerynb.progress(AsyncResult("0" * 32, app=rpc_app))


def test_separate_celery_worker_serves_the_project(ip, tmp_path):
    """`celery -A proj worker` in its own process, the kernel on the same (embedded) server."""
    with capture_output():
        ip.run_line_magic("celery", "use proj --local")
    from proj.celery import app as proj_app
    from proj.tasks import add

    url = proj_app.conf.broker_url
    env = dict(os.environ, PROJ_BROKER=url, PROJ_BACKEND=url, PYTHONPATH=str(PROJECTS))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "proj", "worker", "--pool", "solo", "--hostname", "projw@%h",
         "--without-mingle", "--without-gossip", "--logfile", str(tmp_path / "proj.log")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["CELERYNB_AUTOSTART"] = "0"  # no in-kernel worker: the process must serve it
        result = add.delay(7, 8)
        assert result.get(timeout=30) == 15
        assert celerynb.current() is None  # so the separate process served it
    finally:
        os.environ.pop("CELERYNB_AUTOSTART", None)
        worker.terminate()
        worker.wait(30)
