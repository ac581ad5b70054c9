"""Each task's own output (stdout, stderr, logging, fds 1/2 in worker processes), stored capped
next to its result, shown by ``celerynb.logs`` and TaskTable, never written to a cell."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from pathlib import Path

import pytest
from conftest import registered, wait_for

import celerynb
from celerynb.display.table import TaskTable
from celerynb.display.task_logs import NOT_CAPTURED, TaskLogs
from celerynb.tracking.monitor import get_monitor
from celerynb.workers import capture, task_logs

TESTS = Path(__file__).resolve().parent

CHATTY_CELL = (
    "%%celery_task\n"
    "def chatty(x):\n"
    "    import logging, sys\n"
    "    print('printed', x)\n"
    "    logging.getLogger('mine').warning('logged %s', x)\n"
    "    sys.stderr.write(f'stderr {x}\\n')\n"
    "    return x\n"
)


def test_in_kernel_task_output_goes_to_its_logs_and_never_to_a_cell(kernel):
    assert kernel.run("%load_ext celerynb").status == "ok"
    assert kernel.run(CHATTY_CELL).status == "ok"
    ran = kernel.run("r = chatty.delay('x1')\nr.get(timeout=60)", timeout=120)
    assert ran.status == "ok" and ran.text == "'x1'", ran
    # Thread output still buffered by the kernel would be sent before this cell's own reply.
    shown = kernel.run("import sys, celerynb\nsys.stdout.flush(); sys.stderr.flush()\ncelerynb.logs(r)")
    assert shown.text.splitlines() == ["printed x1", "WARNING mine: logged x1", "stderr x1"], shown
    assert "celerynb-logs" in shown.results[0]["text/html"] and "warnings" in shown.results[0]["text/html"]
    everything = "".join(kernel.streams)
    assert "printed x1" not in everything and "logged x1" not in everything and "stderr x1" not in everything
    own = kernel.run("print('the cell prints')\nimport logging; logging.getLogger('mine').error('the cell logs')")
    assert "the cell prints" in own.stdout and "the cell logs" in own.stderr  # the cell's own output is untouched
    stopped = kernel.run("celerynb.stop()\nimport sys\n(type(sys.stdout).__name__, type(sys.stderr).__name__)")
    assert stopped.text == "('OutStream', 'OutStream')", stopped  # the kernel's streams given back


@pytest.fixture
def two_step_tasks(app):
    """Two tasks that take turns printing (events between them), so their output interleaves."""
    turns = [threading.Event() for _ in range(4)]

    def first() -> str:
        print("first: 1")
        logging.getLogger("first").warning("logged")
        turns[0].set()
        assert turns[1].wait(30)
        print("first: 2")
        sys.stderr.write("first: stderr\n")
        turns[2].set()
        return "first"

    def second() -> str:
        assert turns[0].wait(30)
        print("second: 1")
        logging.getLogger("second").info("not shown (below the logger's level)")
        logging.getLogger("second").error("logged too")
        turns[1].set()
        assert turns[2].wait(30)
        print("second: 2")
        return "second"

    with registered(app, first, "logtests.first") as a, registered(app, second, "logtests.second") as b:
        yield a, b, turns


def test_two_concurrent_tasks_on_one_in_kernel_worker_never_mix(app, two_step_tasks, capsys):
    first, second, turns = two_step_tasks
    celerynb.start(workers=1, concurrency=4)
    b = second.delay()
    a = first.delay()
    assert turns[1].wait(30)
    print("the main thread, meanwhile")  # not a task's thread: passes through
    assert a.get(timeout=30) == "first" and b.get(timeout=30) == "second"
    logs_a, logs_b = celerynb.logs(a), celerynb.logs(b)
    assert logs_a.lines == ["first: 1", "WARNING first: logged", "first: 2", "first: stderr"]
    assert logs_b.lines == ["second: 1", "ERROR second: logged too", "second: 2"]
    assert (logs_a.marker, logs_b.marker) == ("warning", "danger")
    assert celerynb.logs([a, b]) == {a.id: logs_a, b.id: logs_b}
    out = capsys.readouterr()
    assert "the main thread, meanwhile" in out.out and "first: 1" not in out.out + out.err
    # The worker log file keeps the records, as before.
    worker_log = Path(celerynb.current().log_file).read_text()
    assert "first: logged" in worker_log and "second: logged too" in worker_log


def test_capture_survives_a_redirect_and_stop_gives_the_streams_back(app):
    def talk() -> str:
        print("said in a task")
        return "ok"

    with registered(app, talk, "logtests.talk") as task:
        celerynb.start(workers=1)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):  # a cell's own redirect, while tasks run
            said = task.delay()
            assert said.get(timeout=30) == "ok"
            print("the cell's own line")
        assert celerynb.logs(said).lines == ["said in a task"]
        assert buffer.getvalue() == "the cell's own line\n"
        assert "said in a task" not in buffer.getvalue()
        celerynb.stop()
    assert not isinstance(sys.stdout, capture.RoutedStream) and not isinstance(sys.stderr, capture.RoutedStream)
    assert capture.mode is None


def test_a_task_that_prints_nothing_writes_nothing(app):
    from conftest import command_calls, commands_sent

    def quiet(x: int) -> int:
        return x

    with registered(app, quiet, "logtests.quiet") as task:
        cluster = celerynb.start(workers=1)
        assert task.delay(0).get(timeout=30) == 0  # warm
        before = command_calls(cluster.server.url)
        assert [task.delay(i).get(timeout=30) for i in range(5)] == list(range(5))
        sent = commands_sent(before, command_calls(cluster.server.url))
        assert sent.get("evalsha", 0) == 5, sent  # one per stored result: none for logs
        assert not list(app.backend.client.scan_iter(match="*celerynb-logs-*"))
        quiet_one = task.delay(9)
        quiet_one.get(timeout=30)
        assert repr(celerynb.logs(quiet_one)) == "(this task wrote no output)"


def test_logs_of_tasks_of_another_app_say_so_in_one_line():
    from celery import Celery

    other = Celery("not-celerynb", set_as_current=False)
    logs = celerynb.logs("some-task-id", app=other)
    assert repr(logs) == NOT_CAPTURED and "\n" not in NOT_CAPTURED
    with pytest.raises(TypeError, match="Cannot follow int"):
        celerynb.logs(42)


@pytest.fixture
def process_cluster(app):
    """A local cluster whose only worker is one ``celery worker`` process (prefork, 1 child)
    that knows the tasks of ``tests/_log_tasks.py``."""
    with celerynb.LocalCluster(app, workers=0) as cluster:
        cluster.add_process(concurrency=1, extra_args=["--include", "_log_tasks"], env={"PYTHONPATH": str(TESTS)})
        yield cluster


def test_worker_process_captures_print_logging_stderr_and_c_level_writes(app, process_cluster):
    result = app.send_task("logtests.noisy", ("p1",))
    assert result.get(timeout=30) == "p1"
    logs = celerynb.logs(result)
    assert logs.lines == ["printed p1", "WARNING logtests: logged p1", "stderr p1", "fd one p1", "libc printf p1"]
    assert logs.marker == "warning"
    again = app.send_task("logtests.noisy", ("p2",))  # the next task in the same child: only its own
    assert again.get(timeout=30) == "p2" and celerynb.logs(again).lines[0] == "printed p2"
    assert len(celerynb.logs(again).lines) == 5
    log_file = Path(process_cluster.processes[0].logfile)
    wait_for(lambda: "logged p2" in log_file.read_text(), timeout=10, message="the record in the worker log")
    assert "logged p1" in log_file.read_text()


def test_cap_keeps_the_last_64_kb_and_logs_expire_with_the_result(app, process_cluster):
    result = app.send_task("logtests.flood", (2000,))  # ~200 KB
    assert result.get(timeout=60) == 2000
    logs = celerynb.logs(result)
    assert logs.lines[-1].startswith("line 001999 ")
    assert len(logs.text.encode()) <= task_logs.CAP and logs.dropped > 100_000
    assert logs.written == 2000 * (12 + 90 + 1)
    assert all(line.startswith("line ") and len(line) == 102 for line in logs.lines)  # no cut line kept
    client = app.backend.client
    result_ttl = client.ttl(app.backend.get_key_for_task(result.id))
    logs_ttl = client.ttl(task_logs.logs_key(app.backend, result.id))
    assert result_ttl > 0 and abs(result_ttl - logs_ttl) <= 2, (result_ttl, logs_ttl)
    assert result_ttl <= app.conf.result_expires


def test_a_running_task_logs_are_readable_while_it_runs(app, process_cluster):
    key = f"logtests-release-{id(app)}"
    result = app.send_task("logtests.wait_for_release", (key,))
    try:
        wait_for(lambda: "before the release" in celerynb.logs(result).text, timeout=30,
                 message="the output of a task still running")
        assert not result.ready()
        table = TaskTable([result])
        table._live = True  # as shown in a front end: the ticker reads running rows' logs
        wait_for(lambda: "before the release" in table._repr_html_(), timeout=30, message="the live pane")
        table.close()
    finally:
        app.backend.client.rpush(key, "go")
    assert result.get(timeout=30) == "released"
    assert celerynb.logs(result).lines == ["before the release", "after the release"]


def test_task_table_shows_a_pane_and_marks_warnings_and_errors(app, two_step_tasks):
    first, second, turns = two_step_tasks

    def plain() -> str:
        print("<b>only a print</b>")
        return "plain"

    with registered(app, plain, "logtests.plain") as quiet:
        celerynb.start(workers=1, concurrency=4)
        results = [quiet.delay(), second.delay(), first.delay()]
        get_monitor(app).wait([r.id for r in results], timeout=30)
        html = TaskTable(results)._repr_html_()
    rows = html.split("<tr>")[2:]  # the header, then one task row each (with its log row)
    assert len(rows) == 3
    assert "celerynb-log-marker" not in rows[0] and "&lt;b&gt;only a print&lt;/b&gt;" in rows[0]
    assert "<b>only" not in html
    assert ">errors<" in rows[1] and ">warnings<" in rows[2]
    assert "logs (3 lines)" in rows[1] and "logs (4 lines)" in rows[2]


def test_pane_of_a_long_log_shows_the_last_lines():
    entry = TaskLogs("t", "".join(f"n{i}\n" for i in range(500)), written=10**6)
    html = entry._repr_html_()
    assert "logs (500 lines)" in html and "n499" in html and "n299\n" not in html and "n300" in html
    assert "300 more lines in celerynb.logs(result)" in html and "bytes dropped by the 64 KB cap" in html


def test_items_of_a_batched_map_each_have_their_own_logs(app):
    def shout(x: int) -> int:
        print(f"item {x}")
        if x == 2:
            logging.getLogger("batch").warning("two is odd")
        return x

    with registered(app, shout, "logtests.shout") as task:
        celerynb.start(workers=1)
        group = celerynb.map(task, [1, 2, 3], batch=3)  # one message runs the three, one after the other
        assert group.get(timeout=30) == [1, 2, 3]
        found = celerynb.logs(group)
    assert [found[r.id].lines for r in group.results] == [["item 1"], ["item 2", "WARNING batch: two is odd"], ["item 3"]]


def test_progress_summary_shows_each_task_log_pane_but_its_text_stays_the_same(app, two_step_tasks):
    from celerynb.display.progress import WidgetProgress
    from celerynb.display.text import TextProgress

    first, second, _turns = two_step_tasks
    celerynb.start(workers=1, concurrency=4)
    results = [second.delay(), first.delay()]
    shown = TextProgress([r.id for r in results], app)
    shown.wait(30)
    html = shown.summary_html()
    assert "logs (3 lines)" in html and "logs (4 lines)" in html and ">errors<" in html and ">warnings<" in html
    assert "logged" not in shown.text() and "logs" not in shown.text()  # text/plain: states only, as before
    live = WidgetProgress([r.id for r in results], app)
    live.refresh()
    rows = [detail.value for _, _, detail in live.rows]
    assert ">errors<" in rows[0] and "second: 2" in rows[0] and ">warnings<" in rows[1] and "first: 2" in rows[1]
    live.close()


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_solo_and_threads_worker_processes_capture_too(app, pool):
    """Solo runs one task at a time: fds too. Threads: per thread (fd writes cannot be told apart)."""
    with celerynb.LocalCluster(app, workers=0) as cluster:
        cluster.add_process(concurrency=2, pool=pool, extra_args=["--include", "_log_tasks"],
                            env={"PYTHONPATH": str(TESTS)})
        result = app.send_task("logtests.noisy", (pool,))
        assert result.get(timeout=30) == pool
        lines = celerynb.logs(result).lines
    python_level = [f"printed {pool}", f"WARNING logtests: logged {pool}", f"stderr {pool}"]
    c_level = [f"fd one {pool}", f"libc printf {pool}"]
    assert lines == (python_level + c_level if pool == "solo" else python_level)


def test_stderr_output_alone_marks_the_task(app):
    def grumble() -> str:
        sys.stderr.write("only stderr\n")
        return "done"

    def hum() -> str:
        sys.stdout.write("only stdout\n")
        return "done"

    with registered(app, grumble, "logtests.grumble") as loud, registered(app, hum, "logtests.hum") as quiet:
        celerynb.start(workers=1)
        grumbled, hummed = loud.delay(), quiet.delay()
        assert grumbled.get(timeout=30) == hummed.get(timeout=30) == "done"
    assert celerynb.logs(grumbled).marker == "warning" and celerynb.logs(grumbled).lines == ["only stderr"]
    assert celerynb.logs(hummed).marker == "" and celerynb.logs(hummed).lines == ["only stdout"]
