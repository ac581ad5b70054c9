"""The magics in a real Jupyter kernel, as a user runs them cell by cell."""

from __future__ import annotations

import psutil


def test_define_run_redefine_in_kernel(kernel):
    load = kernel.run("%load_ext celerynb")
    assert load.status == "ok" and load.stdout == "" and load.stderr == ""
    kernel.run("%%celery_task\ndef double(x):\n    return 2 * x\n")
    first = kernel.run("double.delay(21).get(timeout=10)")
    assert first.text == "42", first
    kernel.run("%%celery_task\ndef double(x):\n    return 3 * x\n")
    second = kernel.run("double.delay(21).get(timeout=10)")
    assert second.text == "63"
    # Worker logs go to the log file, never into a cell.
    assert "celery" not in (first.stdout + first.stderr + second.stdout + second.stderr).lower()
    status = kernel.run("%celery status")
    assert "notebook tasks: notebook.double" in status.text
    assert ":***@127.0.0.1:" in status.text


def test_bad_input_shows_one_line_errors(kernel):
    kernel.run("%load_ext celerynb")
    # IPython shows a UsageError as one line on stderr, without a traceback.
    bad = kernel.run("%%celery_task --frobnicate\ndef f():\n    pass\n")
    assert bad.stderr.startswith("UsageError:") and "unrecognized arguments: --frobnicate" in bad.stderr
    syntax = kernel.run("%%celery_task\ndef f(:\n    pass\n")
    assert syntax.stderr.strip().count("\n") == 0 and "syntax error on line 1" in syntax.stderr
    line = kernel.run("%celery nonsense")
    assert line.stderr.startswith("UsageError:") and "invalid choice" in line.stderr
    assert "Traceback" not in bad.stderr + syntax.stderr + line.stderr
    assert kernel.run("'f' in dir()").text == "False"


def test_eager_on_off_in_kernel(kernel):
    kernel.run("%load_ext celerynb")
    kernel.run("%%celery_task --bind\ndef job(self, x):\n    self.update_state(state='PROGRESS', meta={'progress': 50})\n    return x + 1\n")
    on = kernel.run("%celery eager on")
    assert "Eager mode on" in on.stdout
    ran = kernel.run("r = job.delay(1)\nfrom celery.result import AsyncResult\n(r.get(), AsyncResult(r.id).state)")
    assert ran.results[-1]["text/plain"] == "(2, 'SUCCESS')"
    # The eager run showed a progress display in the cell as it started.
    assert any("|" in r.get("text/plain", "") for r in ran.results[:-1])
    last_line = kernel.run("job.delay(2)")  # the display hook shows no second bar for it
    assert [r["text/plain"] for r in last_line.results] == ["notebook.job: 100% |####################| SUCCESS"]
    off = kernel.run("%celery eager off\nimport celerynb; celerynb.current() is None")
    assert off.text == "True"
    on_worker = kernel.run("job.delay(5).get(timeout=10)")
    assert on_worker.text == "6"


_NESTED_RUN = "import asyncio\nasync def one():\n    return 1\nasyncio.run(one())"
_SHOWN_AS_PROGRESS = (
    "from celery.result import AsyncResult\n"
    "type(get_ipython().display_formatter.ipython_display_formatter.lookup(AsyncResult('x'))).__name__"
)


def test_unload_undoes_everything_load_did_and_reload_brings_it_back(kernel):
    before = kernel.run(_NESTED_RUN)
    assert "cannot be called from a running event loop" in str(before.error) + before.stderr
    kernel.run("%load_ext celerynb")
    assert kernel.run(_NESTED_RUN).text == "1"
    assert kernel.run(_SHOWN_AS_PROGRESS).text == "'function'"
    kernel.run("%unload_ext celerynb")
    gone = kernel.run("%celery status")
    assert "Line magic function `%celery` not found" in gone.stderr + str(gone.error)
    assert "Cell magic `%%celery_task` not found" in kernel.run("%%celery_task\ndef f():\n    pass\n").stderr
    # asyncio.run refuses again, results display as plain reprs, and publishing records nothing.
    after = kernel.run(_NESTED_RUN)
    assert "cannot be called from a running event loop" in str(after.error) + after.stderr
    shown = kernel.run(_SHOWN_AS_PROGRESS)
    assert "KeyError" in str(shown.error) + shown.stderr
    # A published task (the signal Celery sends after publishing) is no longer recorded.
    def published(tid: str) -> str:
        return ("from celery.signals import after_task_publish\n"
                "from celerynb.tracking.submitted import submitted\n"
                f"after_task_publish.send(sender='t', headers={{'id': {tid!r}, 'task': 't'}}, body=None)\n"
                f"submitted.get({tid!r}) is not None")

    assert kernel.run(published("after-unload")).text == "False"
    assert kernel.run("hasattr(get_ipython(), '_celerynb_magics')").text == "False"
    kernel.run("%reload_ext celerynb")
    back = kernel.run("%celery status")
    assert back.status == "ok" and "no local cluster" in back.text
    assert kernel.run(_NESTED_RUN).text == "1"
    assert kernel.run(published("after-reload")).text == "True"


def test_shutdown_with_running_cluster_is_prompt_and_clean(kernel):
    kernel.run("%load_ext celerynb")
    kernel.run("%celery start --workers 2")
    pids = kernel.run("import celerynb; celerynb.current().server.pid")
    server_pid = int(pids.text)
    popen = kernel.km.provisioner.process
    kernel.shutdown()
    # jupyter_client kills (SIGKILL, status -9) a kernel still alive after its shutdown wait:
    # status 0 means the kernel finished its own teardown in time.
    assert popen.wait(timeout=10) == 0
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE


FOLLOWERS = ("from celerynb.tracking.monitor import get_monitor\n"
             "_m = get_monitor()\n"
             "print(len(_m._listeners), len(_m._tickers))\n")


def test_rerunning_a_live_table_cell_replaces_it_instead_of_adding_one(kernel):
    """Each ``%celery tasks --live`` follows every task until closed: a re-run of its cell closes
    the earlier table (JupyterLab names the cell in each execution); other cells keep theirs."""
    assert kernel.run("%load_ext celerynb").status == "ok"
    assert kernel.run(FOLLOWERS).stdout.split() == ["0", "0"]
    for _ in range(3):
        assert kernel.run("%celery tasks --live", cell_id="live-cell").status == "ok"
    assert kernel.run(FOLLOWERS).stdout.split() == ["1", "1"]
    assert kernel.run("%celery tasks --live", cell_id="another-cell").status == "ok"
    assert kernel.run(FOLLOWERS).stdout.split() == ["2", "2"]
    assert kernel.run("%celery tasks --live", cell_id="live-cell").status == "ok"
    assert kernel.run(FOLLOWERS).stdout.split() == ["2", "2"]
    assert kernel.run("%celery tasks --live").status == "ok"  # no cell id (a terminal): kept until closed
    assert kernel.run(FOLLOWERS).stdout.split() == ["3", "3"]


def test_listing_tasks_starts_nothing_and_the_first_task_still_runs(kernel):
    """``%celery tasks`` in a fresh kernel lists the tasks and starts no server, worker or
    cluster (it used to start the embedded server through the app's first configuration)."""
    assert kernel.run("%load_ext celerynb").status == "ok"
    listing = kernel.run("%celery tasks")
    assert listing.status == "ok" and "tasks.process_document" in listing.text, listing
    probe = kernel.run("import celerynb\nfrom celerynb.cluster import server\n"
                       "(server.shared_server(start=False), celerynb.current())")
    assert probe.text == "(None, None)", probe
    assert psutil.Process(kernel.pid).children(recursive=True) == []
    ran = kernel.run("from celerynb.workers.tasks import analyze_content\n"
                     "analyze_content.delay('a b a').get(timeout=60)['words']", timeout=120)
    assert ran.status == "ok" and ran.text == "3", ran  # the first submission resolves and starts it


LOGGING_TASK = (
    "%%celery_task\n"
    "def noisy(x):\n"
    "    import logging\n"
    "    logging.getLogger('tutorial').error('Task failed: %s', x)\n"
    "    return x\n"
)


def test_what_a_task_logs_goes_to_the_worker_log_not_the_cell(kernel):
    """The guide's ``logger.error`` in a task on the in-kernel worker printed a red box in the cell."""
    assert kernel.run("%load_ext celerynb").status == "ok"
    assert kernel.run(LOGGING_TASK).status == "ok"
    ran = kernel.run("noisy.delay('never works').get(timeout=60)", timeout=120)
    assert ran.status == "ok" and "Task failed" not in ran.stderr, ran
    logs = kernel.run("import celerynb, pathlib\n"
                      "print(any('Task failed: never works' in p.read_text() "
                      "for p in pathlib.Path(celerynb.current().log_dir).iterdir() if p.is_file()))")
    assert logs.stdout.strip() == "True", logs
    own = kernel.run("import logging\nlogging.getLogger('tutorial').error('the cell says so')")
    assert "the cell says so" in own.stderr  # the cell's own logging is untouched
    eager = kernel.run("noisy('called here')")
    assert "Task failed: called here" in eager.stderr  # a task called in the cell logs in the cell
