"""%%celery_task and %celery in a real InteractiveShell, against the embedded cluster."""

from __future__ import annotations

import re

import pytest
from conftest import new_shell
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import celerynb
from celerynb.cluster import local as cluster_mod


@pytest.fixture
def ip(app, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = new_shell()
    shell.run_line_magic("load_ext", "celerynb")
    yield shell
    shell.run_line_magic("unload_ext", "celerynb")
    for name in [n for n in app.tasks if n.startswith(("notebook.", "tests.magic"))]:
        app.tasks.pop(name, None)
    TerminalInteractiveShell.clear_instance()


def test_load_ext_starts_nothing_and_is_idempotent(ip):
    with capture_output() as out:
        ip.run_line_magic("load_ext", "celerynb")
    assert celerynb.current() is None
    assert "celery" in ip.magics_manager.magics["line"]
    assert "celery_task" in ip.magics_manager.magics["cell"]
    assert "Traceback" not in out.stdout + out.stderr


def test_cell_task_runs_and_is_bound_by_name(ip):
    ip.run_cell_magic("celery_task", "", "def add(x, y):\n    return x + y\n")
    add = ip.user_ns["add"]
    assert add.name == "notebook.add"
    assert add.delay(2, 3).get(timeout=10) == 5


def test_redefinition_runs_new_body_on_running_worker(ip):
    ip.run_cell_magic("celery_task", "", "def greet(name):\n    return 'hello ' + name\n")
    assert ip.user_ns["greet"].delay("a").get(timeout=10) == "hello a"
    assert celerynb.current() is not None  # the worker now runs
    ip.run_cell_magic("celery_task", "", "def greet(name):\n    return 'bye ' + name\n")
    assert ip.user_ns["greet"].delay("a").get(timeout=10) == "bye a"


def test_guide_custom_task_options(ip):
    cell = (
        "def custom_task(self, arg1, arg2=None):\n"
        "    self.update_state(state='PROGRESS', meta={'progress': 50})\n"
        "    return f'Processed {arg1} with {arg2}'\n"
    )
    ip.run_cell_magic("celery_task", "--bind --queue high-priority --max-retries 3 --name tests.magic_custom", cell)
    task = ip.user_ns["custom_task"]
    assert (task.name, task.queue, task.max_retries) == ("tests.magic_custom", "high-priority", 3)
    assert task.delay(arg1="value", arg2="option").get(timeout=10) == "Processed value with option"


def test_task_on_new_queue_is_consumed(ip):
    ip.run_cell_magic("celery_task", "--queue notebook-extra", "def ping():\n    return 'pong'\n")
    assert ip.user_ns["ping"].delay().get(timeout=10) == "pong"


def test_helpers_in_cell_stay_available(ip):
    cell = (
        "import functools\n"
        "@functools.lru_cache\n"
        "def square(x):\n    return x * x\n\n"
        "def sum_squares(n):\n    return sum(square(i) for i in range(n))\n"
    )
    ip.run_cell_magic("celery_task", "", cell)
    assert ip.user_ns["sum_squares"].delay(4).get(timeout=10) == 14


@pytest.mark.parametrize(
    "line, cell, message",
    [
        ("", "x = 1\n", "defines no function"),
        ("", "def a():\n    pass\n\ndef b():\n    pass\n", "defines 2 functions (a, b)"),
        ("", "def broken(:\n    pass\n", "syntax error on line 1"),
        ("--no-such-option", "def f():\n    pass\n", "unrecognized arguments"),
        ("--max-retries lots", "def f():\n    pass\n", "invalid int value"),
        ("--rate-limit fast", "def f():\n    pass\n", "is not a rate"),
        ("", "async def f():\n    pass\n", "coroutine function"),
        ("", "def numbers(n):\n    yield from range(n)\n", "numbers is a generator function"),
        ("--name celery.ping", "def f():\n    return 'mine'\n", "in Celery's own namespace"),
        ("--name tasks.process_document", "def f():\n    pass\n", "already a task of the app"),
    ],
)
def test_bad_cells_raise_one_line_usage_errors(ip, line, cell, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        ip.run_cell_magic("celery_task", line, cell)
    assert "\n" not in str(err.value)


@pytest.mark.reliability
def test_decorated_function_is_the_task_not_its_decorator(ip):
    cell = (
        "def twice(f):\n    def wrapper(x):\n        return 2 * f(x)\n    return wrapper\n\n"
        "@twice\ndef work(x):\n    return x + 1\n"
    )
    ip.run_cell_magic("celery_task", "", cell)
    task = ip.user_ns["work"]
    assert task.name == "notebook.work" and task.delay(1).get(timeout=10) == 4
    assert not hasattr(ip.user_ns["twice"], "delay")  # the decorator stays a plain function


@pytest.mark.reliability
def test_refused_cells_leave_the_session_as_it_was(ip, app):
    builtin = app.tasks["celery.backend_cleanup"]
    for line, cell in [("", "ran = True\ndef gen():\n    yield 1\n"),
                       ("--name celery.backend_cleanup", "ran = True\ndef ping():\n    return 'mine'\n")]:
        with pytest.raises(UsageError):
            ip.run_cell_magic("celery_task", line, cell)
    assert "ran" not in ip.user_ns and "gen" not in ip.user_ns and "ping" not in ip.user_ns
    assert app.tasks["celery.backend_cleanup"] is builtin
    # A generator nested in the task is fine: only the task itself must return.
    ip.run_cell_magic("celery_task", "", "def listed(n):\n    def gen():\n        yield from range(n)\n"
                      "    return list(gen())\n")
    assert ip.user_ns["listed"].delay(3).get(timeout=10) == [0, 1, 2]


def test_failed_redefinition_keeps_previous_task(ip):
    ip.run_cell_magic("celery_task", "", "def stable():\n    return 1\n")
    before = ip.user_ns["stable"]
    with pytest.raises(UsageError):
        ip.run_cell_magic("celery_task", "", "def stable(:\n    return 2\n")
    with capture_output():
        with pytest.raises(UsageError, match="raised ZeroDivisionError"):
            ip.run_cell_magic("celery_task", "", "def stable():\n    return 3\n1/0\n")
    assert ip.user_ns["stable"] is before
    assert before.delay().get(timeout=10) == 1


def test_status_shows_masked_broker_workers_and_tasks(ip):
    ip.run_cell_magic("celery_task", "", "def shown():\n    return 1\n")
    ip.run_line_magic("celery", "start --workers 2 --pool solo")
    status = ip.run_line_magic("celery", "status")
    text = repr(status)
    running = cluster_mod.current()
    assert "redis://:***@127.0.0.1:" in text and running.server.password not in text
    assert text.count("(thread, solo x1, accepts cell tasks)") == 2
    assert "notebook.shown" in text
    assert "default=0" in text and "high-priority=0" in text
    assert running.server.password not in status._repr_html_()


def test_start_stop_restart(ip):
    ip.run_line_magic("celery", "start --workers 1 --concurrency 2")
    first = cluster_mod.current()
    with pytest.raises(UsageError, match="already running"):
        ip.run_line_magic("celery", "start")
    ip.run_line_magic("celery", "restart")
    second = cluster_mod.current()
    assert second is not first and second.concurrency == 2
    with capture_output() as out:
        ip.run_line_magic("celery", "stop")
    assert "Stopped" in out.stdout and cluster_mod.current() is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("", "missing subcommand"),
        ("launch", "invalid choice: 'launch'"),
        ("start --workers -1", "must be >= 0"),
        ("start --pool prefork", "invalid choice: 'prefork'"),
        ("eager maybe", "invalid choice: 'maybe'"),
        ("connect", "the following arguments are required: url"),
    ],
)
def test_bad_celery_lines(ip, line, message):
    with pytest.raises(UsageError, match=message) as err:
        ip.run_line_magic("celery", line)
    assert "\n" not in str(err.value)


def test_subcommand_help(ip):
    with capture_output() as out:
        ip.run_line_magic("celery", "start --help")
    assert "--concurrency" in out.stdout


def test_eager_mode_runs_in_cell_and_stores_results(ip, app):
    from celery.result import AsyncResult

    ip.run_cell_magic("celery_task", "--bind", "def eager_job(self, x):\n    return x * 2\n")
    before = {k: app.conf[k] for k in ("task_always_eager", "task_eager_propagates")}
    with capture_output():
        ip.run_line_magic("celery", "eager on")
    result = ip.user_ns["eager_job"].delay(21)
    assert result.get() == 42
    assert AsyncResult(result.id, app=app).state == "SUCCESS"
    assert celerynb.current() is None  # no worker needed
    ip.run_cell_magic("celery_task", "", "def eager_fail():\n    raise ValueError('nope')\n")
    failed = ip.user_ns["eager_fail"].delay()
    assert AsyncResult(failed.id, app=app).state == "FAILURE"
    with capture_output():
        ip.run_line_magic("celery", "eager off")
    assert {k: app.conf[k] for k in before} == before


def test_purge_reports_removed_messages(ip, app):
    ip.run_cell_magic("celery_task", "--queue purge-me", "def queued():\n    return 1\n")
    ip.run_line_magic("celery", "start --queues default")
    for _ in range(3):
        ip.user_ns["queued"].delay()
    with capture_output() as out:
        ip.run_line_magic("celery", "purge purge-me")
    assert "Removed 3 message(s) from queue 'purge-me'" in out.stdout


def test_tasks_lists_notebook_and_package_tasks(ip):
    ip.run_cell_magic("celery_task", "", "def listed():\n    return 1\n")
    text = repr(ip.run_line_magic("celery", "tasks"))
    assert re.search(r"notebook.listed +notebook", text)
    assert "tasks.process_document" in text and "celery.ping" not in text
    assert "celerynb.batch" not in text  # map's batch runner is no task of the user's


def test_unload_removes_magics(ip):
    ip.run_line_magic("unload_ext", "celerynb")
    assert "celery" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "celerynb")
    assert "celery_task" in ip.magics_manager.magics["cell"]


@pytest.mark.external
def test_connect_to_machine_redis_runs_cell_tasks_there(ip, app, redis7_url):
    import redis

    ip.run_cell_magic("celery_task", "", "def remote_add(x, y):\n    return x + y\n")
    status = ip.run_line_magic("celery", f"connect {redis7_url}")
    assert "127.0.0.1:6379/11" in repr(status) and "in-kernel workers (explicit)" in repr(status)
    result = ip.user_ns["remote_add"].delay(40, 2)
    assert result.get(timeout=10) == 42
    assert redis.Redis.from_url(redis7_url).exists(f"celery-task-meta-{result.id}") == 1


def test_connect_to_dead_broker_fails_fast_with_masked_url(ip):
    from celerynb.cluster.server import free_port

    port = free_port()
    with pytest.raises(UsageError, match=rf"Cannot reach redis://:\*\*\*@127.0.0.1:{port}/0") as err:
        ip.run_line_magic("celery", f"connect redis://:s3cret@127.0.0.1:{port}/0")
    assert "s3cret" not in str(err.value)


def test_connect_auto_uses_celerynb_up_cluster(ip, discovery_cluster):
    ip.run_cell_magic("celery_task", "", "def where():\n    import os\n    return os.getpid()\n")
    ip.run_cell("from celerynb.workers.celery_app import app\n@app.task\ndef plain_task():\n    pass\n")
    status = ip.run_line_magic("celery", "connect auto --no-workers")
    assert "celerynb up cluster" in repr(status)
    assert repr(status).startswith("celerynb: connected, no workers in this kernel")
    assert "notebook tasks: celerynb.plain_task, notebook.where" in repr(status)  # @app.task counts
    html = status._repr_html_()
    assert "stopped" not in html and "connected: no workers in this kernel" in html
    assert ":***@127.0.0.1:" in html  # the broker line, as in the text
    from celerynb.workers.tasks import analyze_content

    # No in-kernel worker: the `celerynb up` worker process serves package tasks.
    assert analyze_content.delay("one two").get(timeout=20)["words"] == 2


def test_eager_update_state_reaches_the_display_while_the_task_runs(ip, app, monkeypatch):
    monkeypatch.setenv("CELERYNB_NONINTERACTIVE", "0")  # live displays (CI shows only the outcome)
    cell = (
        "def halfway(self):\n"
        "    import time\n"
        "    from celerynb.display import eager\n"
        "    self.update_state(state='PROGRESS', meta={'progress': 50, 'status': 'half'})\n"
        "    deadline = time.monotonic() + 10\n"
        "    while time.monotonic() < deadline:\n"
        "        if '50%' in eager.last_display.text():\n"
        "            return 'seen while running'\n"
        "        time.sleep(0.01)\n"
        "    return 'never seen: ' + eager.last_display.text()\n"
    )
    ip.run_cell_magic("celery_task", "--bind", cell)
    with capture_output():
        ip.run_line_magic("celery", "eager on")
        try:
            assert ip.user_ns["halfway"].delay().get() == "seen while running"
        finally:
            ip.run_line_magic("celery", "eager off")


def test_question_mark_help_lists_options(ip):
    with capture_output() as out:
        ip.run_cell("%%celery_task?\n", store_history=False)
        ip.run_cell("%celery?\n", store_history=False)
    text = out.stdout
    for option in ("--bind", "--queue", "--max-retries", "--rate-limit", "--soft-time-limit", "--acks-late"):
        assert option in text
    assert "%celery connect URL|auto" in text and "%celery use APP" in text


def test_help_of_a_subcommand_is_printed_once(ip, capsys):
    ip.run_line_magic("celery", "start --help")
    assert capsys.readouterr().out.count("usage: %celery start") == 1


def test_an_unknown_cell_option_names_the_magic_and_the_help(ip):
    with pytest.raises(UsageError, match=r"^%%celery_task: unrecognized arguments: --nope\. See %%celery_task\?"):
        ip.run_cell_magic("celery_task", "--nope", "def f():\n    pass\n")


def test_restart_takes_the_start_options_and_keeps_the_others(ip, app):
    import celerynb

    ip.run_line_magic("celery", "start --concurrency 2")
    try:
        ip.run_line_magic("celery", "restart --workers 2")
        running = celerynb.current()
        assert len(running.workers) == 2 and all(w.concurrency == 2 for w in running.workers)
        with pytest.raises(UsageError, match="invalid choice"):
            ip.run_line_magic("celery", "restart --pool nope")
        assert celerynb.current() is running  # a refused restart changes nothing
    finally:
        ip.run_line_magic("celery", "stop")
