"""Bring your own Celery app: a project laid out like Celery's "Next steps" guide."""

from __future__ import annotations

import contextlib
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
    """The project's own settings: RabbitMQ broker, Redis 7 backend (db 12: only our keys removed after)."""
    from conftest import own_keys_only

    with own_keys_only("redis://127.0.0.1:6379/12"):
        ip.run_line_magic("celery", "use proj")
        ip.run_line_magic("celery", "start --workers 1")
        from proj.tasks import add

        running = celerynb.current()
        assert running.app.main == "proj" and running.broker_url.startswith("amqp://")
        result = add.delay(20, 22)
        assert celerynb.progress(result, wait=True, timeout=30) == 42
        assert "guest:***@127.0.0.1:5672" in repr(ip.run_line_magic("celery", "status"))
        celerynb.stop()


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


# -- a Django-style project: @shared_task tasks follow Celery's current app ---------------------------
@pytest.fixture(scope="module")
def shared_project():
    """A private embedded server as the project's own broker and backend, a queue of its own.

    Set before ``sharedproj`` is first imported (it reads them at import), for this process and
    for the kernels and ``celery worker`` processes the tests start.
    """
    import uuid

    from celerynb.cluster import server

    private = server.EmbeddedServer().start()
    queue = f"sharedproj-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("SHAREDPROJ_BROKER", "SHAREDPROJ_BACKEND"):
            mp.setenv(name, private.url)
        mp.setenv("SHAREDPROJ_QUEUE", queue)
        yield {"url": private.url, "queue": queue}
    private.stop()


@contextlib.contextmanager
def _project_worker_process(log: Path, queue: str):
    """The project's own `celery -A sharedproj worker`, a plain Celery worker (no celerynb in it),
    configured by the SHAREDPROJ_* variables of this process; stopped by PID."""
    from conftest import wait_for

    env = dict(os.environ, PYTHONPATH=str(PROJECTS))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "sharedproj", "worker", "--pool", "solo", "--hostname", f"{queue}@%h",
         "--without-mingle", "--without-gossip", "--loglevel", "INFO", "--logfile", str(log)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: log.exists() and " ready." in log.read_text(), timeout=60, message="the project's worker")
        yield log
    finally:
        worker.terminate()
        worker.wait(30)


@pytest.fixture
def project_worker(shared_project, tmp_path):
    with _project_worker_process(tmp_path / "sharedproj-worker.log", shared_project["queue"]) as log:
        yield {"log": log, "name": shared_project["queue"]}


def _sixteen_shared_tasks_from_a_kernel(worker_log: Path) -> None:
    """Issue 14: after `%celery use`, @shared_task tasks were sent by celerynb's app (0 of 16 reached
    the project's worker, an in-kernel worker of celerynb's app served them instead)."""
    from conftest import wait_for

    from _kernel import Kernel

    kernel = Kernel()
    try:
        kernel.run("import sharedproj\n%load_ext celerynb")
        used = kernel.run("%celery use sharedproj\nimport celery\nfrom sharedproj.tasks import add\n"
                          "print(celery.current_app.main, add.app.main)")
        assert used.stdout.split() == ["sharedproj", "sharedproj"], used
        sent = kernel.run("import celerynb\nrs = [add.delay(i, i) for i in range(16)]\n"
                          "print([r.get(timeout=30) for r in rs] == [2 * i for i in range(16)], celerynb.current())")
        assert sent.stdout.split() == ["True", "None"], sent  # all answered, and no in-kernel worker
        wait_for(lambda: worker_log.read_text().count("succeeded in") == 16, timeout=30,
                 message="16 tasks run by the project's worker")
        table = kernel.run("import time\nt = celerynb.TaskTable()\ndeadline = time.monotonic() + 20\n"
                           "while 'SUCCESS 16' not in repr(t) and time.monotonic() < deadline:\n    time.sleep(0.05)\n"
                           "print(repr(t))\nt.close()")
        assert "SUCCESS 16" in table.stdout, table
    finally:
        kernel.run("%celery stop")
        kernel.shutdown()


@pytest.mark.slow
def test_shared_tasks_reach_the_projects_own_worker_after_use(shared_project, project_worker, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(PROJECTS))
    _sixteen_shared_tasks_from_a_kernel(project_worker["log"])


@pytest.mark.external
@pytest.mark.slow
def test_shared_tasks_reach_the_projects_worker_on_rabbitmq_and_redis(rabbitmq_url, tmp_path, monkeypatch):
    """The same with the project's production setup: RabbitMQ broker, Redis backend. Only our own
    queue, exchange and key prefix are touched on those shared servers."""
    import uuid

    import redis
    from conftest import reachable
    from kombu import Connection

    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
    queue = f"sharedproj-{uuid.uuid4().hex[:8]}"
    backend = "redis://127.0.0.1:6379/13"
    for name, value in (("SHAREDPROJ_BROKER", rabbitmq_url), ("SHAREDPROJ_BACKEND", backend),
                        ("SHAREDPROJ_QUEUE", queue), ("PYTHONPATH", str(PROJECTS))):
        monkeypatch.setenv(name, value)
    try:
        with _project_worker_process(tmp_path / "worker.log", queue) as log:
            _sixteen_shared_tasks_from_a_kernel(log)
    finally:
        client = redis.Redis.from_url(backend)
        mine = list(client.scan_iter(f"{queue}:*"))
        if mine:
            client.delete(*mine)
        client.close()
        with Connection(rabbitmq_url) as conn:
            channel = conn.channel()
            channel.queue_delete(queue)
            channel.exchange_delete(queue)


def test_use_local_makes_the_project_current_and_restore_puts_back_what_was(ip, shared_project):
    import celery
    import sharedproj
    from celery import Celery
    from sharedproj.tasks import add

    earlier = Celery("what-was-current", set_as_current=False)
    earlier.set_current()
    with capture_output():
        ip.run_line_magic("celery", "use sharedproj --local")
    assert celery.current_app.main == "sharedproj" and add.app is sharedproj.app
    # In-kernel workers for the project start on the first task, and leave it current.
    assert add.delay(2, 3).get(timeout=20) == 5
    assert celerynb.current().app is sharedproj.app and celery.current_app.main == "sharedproj"
    with capture_output():
        ip.run_line_magic("celery", "use --restore")
    assert celery.current_app._get_current_object() is earlier
    assert sharedproj.app.conf.broker_url == shared_project["url"]


def test_celerynbs_own_workers_leave_the_project_current(ip, shared_project):
    """A celerynb task sent meanwhile starts celerynb's in-kernel workers: they must not make
    celerynb's app current (the project's shared tasks would follow it)."""
    import celery

    from celerynb.workers.tasks import analyze_content

    with capture_output():
        ip.run_line_magic("celery", "use sharedproj")
    assert analyze_content.delay("two words").get(timeout=20)["words"] == 2
    assert celerynb.current().app is apps.celerynb_app()
    assert celery.current_app.main == "sharedproj"


def test_status_asks_plain_workers_nothing_they_do_not_know(ip, project_worker):
    """Issue 14: every status broadcast a command of celerynb's own; a project's plain worker logged
    `pidbox command error: KeyError('celerynb_cells')` and was labelled "refuses cell tasks"."""
    with capture_output():
        ip.run_line_magic("celery", "use sharedproj")
    text = repr(ip.run_line_magic("celery", "status"))
    assert f"{project_worker['name']}@" in text, text  # it answered, so it has logged any error
    log = project_worker["log"].read_text()
    assert "KeyError" not in log and "pidbox command error" not in log, log[-2000:]
    assert "plain Celery worker" in text and "refuses cell tasks" not in text
    html = ip.run_line_magic("celery", "status")._repr_html_()
    assert "plain Celery worker" in html
