"""Progress displays at model level: bar values, styles and labels for every state, groups,
the text twin, escaping, cancel, and the worker-side ``track`` helper."""

from __future__ import annotations

import time
import uuid

import pytest
from conftest import wait_for

from celerynb.display import _views
from celerynb.display.progress import WidgetProgress, progress, widgets_available
from celerynb.display.text import TextProgress
from celerynb.tracking.monitor import TaskSnapshot, get_monitor
from celerynb.workers.track import track


def snap(state, info=None, **kw):
    return TaskSnapshot(task_id="t1", state=state, info=info, name=kw.pop("name", "tasks.x"), **kw)


# -- the view model, every state -----------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "info", "percent", "style", "detail"),
    [
        ("PENDING", None, 0, "", "PENDING"),
        ("STARTED", None, 0, "info", "STARTED"),
        ("PROGRESS", {"progress": 40, "status": "Processing item 4/10"}, 40, "info", "PROGRESS 40% Processing item 4/10"),
        ("PROGRESS", {"current": 3, "total": 4}, 75, "info", "PROGRESS 75%"),
        ("RETRY", {"exc_type": "TemporaryError", "exc_message": ["flaky"]}, 0, "warning",
         "RETRY (retry 2) TemporaryError: flaky"),
        ("SUCCESS", {"ok": 1}, 100, "success", "SUCCESS"),
        ("FAILURE", {"exc_type": "ValueError", "exc_message": ["bad value"]}, 0, "danger",
         "FAILURE ValueError: bad value"),
        ("REVOKED", None, 0, "warning", "REVOKED (cancelled)"),
    ],
)
def test_task_view_every_state(state, info, percent, style, detail):
    view = _views.task_view(snap(state, info, retries=1))
    assert (view.percent, view.bar_style, view.detail) == (percent, style, detail)
    assert _views.task_line(view).startswith(f"tasks.x: {percent:3d}% |")


def test_failure_keeps_last_progress():
    view = _views.task_view(snap("FAILURE", {"exc_type": "E", "exc_message": []}), previous=60.0)
    assert view.percent == 60.0 and view.bar_style == "danger"


def test_group_view_counts_and_styles():
    views = [_views.task_view(snap(s)) for s in ("SUCCESS", "SUCCESS", "PROGRESS", "PENDING")]
    group = _views.group_view(views)
    assert (group.done, group.total, group.percent, group.bar_style) == (2, 4, 50.0, "info")
    assert group.counts == {"PENDING": 1, "PROGRESS": 1, "SUCCESS": 2}
    failed = _views.group_view([_views.task_view(snap("SUCCESS")), _views.task_view(snap("FAILURE"))])
    assert failed.bar_style == "danger" and failed.ready
    assert _views.group_line(failed) == "2 tasks: 100% |####################| 2/2 done · SUCCESS 1 · FAILURE 1"


def test_widgets_not_used_when_noninteractive(monkeypatch):
    monkeypatch.setenv("CELERYNB_NONINTERACTIVE", "1")
    assert widgets_available() is False


def shown_text(html: str) -> str:
    """What a person reads in a bit of HTML: the text, tags gone, entities decoded."""
    import html as html_module
    import re

    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", html)).split())


# -- live displays against a real cluster --------------------------------------------------
def test_widget_follows_long_process_to_success(cluster):
    from celerynb.workers.tasks import long_process

    task_id = str(uuid.uuid4())
    disp = WidgetProgress([task_id], cluster.app)  # watched before it is sent: every value is seen
    seen = []
    name, bar, detail = disp.rows[0]
    bar.observe(lambda change: seen.append(change["new"]), "value")
    long_process.apply_async((list(range(8)),), {"delay": 0.1}, task_id=task_id)
    assert disp.wait(timeout=30) == {"status": "completed", "processed": 8}
    assert bar.value == 100 and bar.bar_style == "success"
    assert name.value == "tasks.long_process" and shown_text(detail.value) == "SUCCESS"
    assert any(0 < v < 100 for v in seen), seen
    assert disp.cancel_button.disabled and disp.cancel_button.layout.display == "none"
    assert "celerynb-progress" in disp.box._dom_classes
    assert repr(disp) == "tasks.long_process: 100% |####################| SUCCESS"
    assert "celerynb-success" in disp.summary_html()


def test_widget_shows_failure_with_exception(cluster):
    from celerynb.workers.tasks import risky_task

    r = risky_task.delay("fail")
    disp = WidgetProgress([r.id], cluster.app)
    value = disp.wait(timeout=30)
    assert type(value).__name__ == "PermanentError"
    _, bar, detail = disp.rows[0]
    assert bar.bar_style == "danger" and bar.value == 100  # a full red bar, not an empty one
    state, _, logs = shown_text(detail.value).partition(" logs (")
    assert state == "FAILURE errors PermanentError: cannot process 'fail'"  # the task logged an ERROR: marked
    assert logs.startswith("1 line): ERROR celerynb.workers.tasks: Task failed: cannot process 'fail'")
    assert "celerynb-badge" in detail.value and "white-space:normal" in detail.value  # wraps, not clipped
    assert bar.layout.min_width == bar.layout.width == "240px"  # a long message cannot squeeze the bar


def test_widget_shows_retry_count(cluster):
    from celerynb.workers.tasks import risky_task

    r = risky_task.delay("flaky:1", base_delay=0.5)
    disp = WidgetProgress([r.id], cluster.app)
    details = [shown_text(disp.rows[0][2].value)]  # the first picture may show the retry already
    disp.rows[0][2].observe(lambda change: details.append(shown_text(change["new"])), "value")
    assert disp.wait(timeout=30) == {"arg": "flaky:1", "attempts": 2}
    assert any(d.startswith("RETRY (retry 1) TemporaryError") for d in details), details


def test_group_display_few_and_many(cluster):
    from celery import group

    from celerynb.workers.tasks import analyze_content

    few = group(analyze_content.s(f"a b c {i}") for i in range(3)).apply_async()
    disp = WidgetProgress([r.id for r in few.results], cluster.app)
    disp.wait(timeout=30)
    assert len(disp.rows) == 3 and disp.group_bar.value == 100 and disp.group_bar.bar_style == "success"
    assert "3/3 done" in disp.group_label.value

    many = [analyze_content.delay(f"x y {i}") for i in range(40)]
    big = WidgetProgress([r.id for r in many], cluster.app)
    big.wait(timeout=60)
    assert big.rows == [] and big.group_bar.value == 100
    assert big.text() == "40 tasks: 100% |####################| 40/40 done · SUCCESS 40"


def test_text_twin_is_deterministic(cluster):
    from celerynb.workers.tasks import long_process, risky_task

    ok = long_process.delay([1, 2], delay=0.01)
    bad = risky_task.delay("fail")
    disp = progress(ok, bad, widget=False)
    assert isinstance(disp, TextProgress)
    disp._quiet = True
    disp.wait(timeout=30)
    assert repr(disp).splitlines() == [
        "2 tasks: 100% |####################| 2/2 done · SUCCESS 1 · FAILURE 1",
        "tasks.long_process: 100% |####################| SUCCESS",
        "tasks.risky_task:   0% |                    | FAILURE PermanentError: cannot process 'fail'",
    ]


def test_progress_wait_returns_results_and_rejects_bad_input(cluster):
    from celerynb.workers.tasks import analyze_content

    r = analyze_content.delay("one two")
    assert progress(r, wait=True, timeout=30, widget=False)["words"] == 2
    with pytest.raises(ValueError, match="at least one task"):
        progress([])
    with pytest.raises(TypeError, match="Cannot follow dict"):
        progress({"a": 1})


def test_user_data_is_escaped(cluster):
    monitor = get_monitor(cluster.app)
    tid = str(uuid.uuid4())
    xss = "<script>alert(1)</script>"
    cluster.app.backend.store_result(tid, None, "PENDING")
    disp = TextProgress([tid], cluster.app)
    monitor._apply(TaskSnapshot(task_id=tid, state="FAILURE", name=xss,
                                info={"exc_type": "ValueError", "exc_message": [xss]}), b"x", force=True)
    html = disp.summary_html()
    assert "<script>" not in html and "&lt;script&gt;" in html
    wdisp = WidgetProgress([tid], cluster.app)
    wdisp.refresh()
    assert shown_text(wdisp.rows[0][2].value).endswith(xss) and "<script>" not in wdisp.rows[0][2].value
    assert "<script>" not in wdisp._bundle(True)["text/html"]


def test_eager_result_shows_final_state(app):
    from celerynb.workers.tasks import analyze_content

    app.conf.task_always_eager = True
    r = analyze_content.delay("eager words")
    disp = progress(r, widget=False)
    disp._quiet = True
    wait_for(lambda: disp.finished, message="eager display finished")
    assert repr(disp) == "tasks.analyze_content: 100% |####################| SUCCESS"


# -- cancel and track() --------------------------------------------------------------------
@pytest.fixture
def tracked_task(cluster):
    app = cluster.app
    app.tasks.pop("tests.tracked_loop", None)

    @app.task(bind=True, name="tests.tracked_loop")
    def tracked_loop(self, n, delay):
        total = 0
        for i in track(range(n), task=self):
            time.sleep(delay)
            total += i
        return total

    yield tracked_loop
    app.tasks.pop("tests.tracked_loop", None)


def test_track_reports_guide_meta_throttled(cluster, tracked_task):
    monitor = get_monitor(cluster.app)
    r = tracked_task.delay(2000, 0.0005)
    seen = []
    remove = monitor.add_listener(seen.append, [r.id])
    monitor.track([r.id])
    assert monitor.wait([r.id], timeout=30)[r.id].info == sum(range(2000))
    remove()
    metas = [s.info for s in seen if s.state == "PROGRESS"]
    assert metas, [(s.state, s.info) for s in seen]
    assert set(metas[-1]) == {"progress", "current", "total", "status"}
    assert metas[-1]["status"].startswith("Processing item ")
    # ~1-2 s of looping at most ~10 updates a second, not one per item.
    assert len(metas) < 60, len(metas)


def test_track_without_task_is_plain_iteration():
    assert list(track([1, 2, 3])) == [1, 2, 3]
    with pytest.raises(ValueError, match="every must be"):
        track([], every=-1)


def test_cancel_stops_running_in_kernel_task(cluster, tracked_task):
    r = tracked_task.delay(600, 0.05)  # 30 s unless cancelled
    disp = WidgetProgress([r.id], cluster.app)
    wait_for(lambda: disp.monitor.snapshot(r.id).state == "PROGRESS", timeout=20, message="task running")
    started = time.monotonic()
    disp.cancel_button.click()
    disp.wait(timeout=20)
    assert time.monotonic() - started < 10
    assert disp.monitor.snapshot(r.id).state == "REVOKED"
    assert disp.rows[0][1].bar_style == "warning" and shown_text(disp.rows[0][2].value) == "REVOKED (cancelled)"


# -- end to end: real kernels through nbclient ---------------------------------------------
NOTEBOOKS = __import__("pathlib").Path(__file__).with_name("notebooks_e2e")


def run_notebook(name, tmp_path, interactive):
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = dict(os.environ)  # CELERYNB_RUNTIME_DIR stays the test session's
    if interactive:
        env["CELERYNB_NONINTERACTIVE"] = "0"  # widgets even under CI=true (.ci/run sets it)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env, cwd=str(tmp_path))  # shuts the kernel down at the end
    nbformat.write(nb, tmp_path / name)
    return nb


def stream_text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_notebook_widgets_end_to_end(tmp_path):
    nb = run_notebook("progress_widgets.ipynb", tmp_path, interactive=True)
    cells = nb.cells
    assert stream_text(cells[2]).strip() == "SUCCESS 100.0 success SUCCESS"
    failed, _, logs = stream_text(cells[3]).strip().partition(" logs (")
    assert failed == "danger FAILURE errors PermanentError: cannot process 'fail'"  # it logged an ERROR: marked
    assert logs.startswith("1 line): ERROR celerynb.workers.tasks: Task failed: cannot process 'fail'")
    assert stream_text(cells[4]).strip() == "RETRY (retry 1) TemporaryError -> SUCCESS"
    assert stream_text(cells[5]).strip() == "REVOKED REVOKED (cancelled)"
    lines = stream_text(cells[6]).strip().splitlines()
    assert lines[0] == "0 100.0 success"
    assert lines[1] == "1000 tasks: 100% |####################| 1000/1000 done · SUCCESS 1000"
    # The saved notebook shows the outcome without a kernel: the display of cell 1 was
    # updated in place with a static summary and a deterministic text/plain.
    (shown,) = [o for o in cells[1].outputs if o.output_type == "display_data"]
    assert shown.data["text/plain"] == "tasks.long_process: 100% |####################| SUCCESS"
    assert "celerynb-success" in shown.data["text/html"]
    # No widget view once final: JupyterLab would prefer it to the HTML and, reopened without
    # the widget state, show "model not found".
    assert "application/vnd.jupyter.widget-view+json" not in shown.data
    # ... and the saved widget state holds the finished bars.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "FloatProgressModel"]
    assert any(b["value"] == 100 and b["bar_style"] == "success" for b in bars)
    assert any(b["bar_style"] == "danger" for b in bars)
    # The display formatter: a bare AsyncResult as the last line shows a progress display.
    last = [o for o in cells[7].outputs if o.output_type in ("display_data", "execute_result")]
    assert last and ("application/vnd.jupyter.widget-view+json" in last[0].data  # still running at the end
                     or "celerynb-progress-summary" in last[0].data.get("text/html", ""))  # or final


@pytest.mark.slow
def test_notebook_text_twin_end_to_end(tmp_path):
    nb = run_notebook("progress_text.ipynb", tmp_path, interactive=False)
    (shown,) = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert shown.data["text/plain"].splitlines() == [
        "2 tasks: 100% |####################| 2/2 done · SUCCESS 1 · FAILURE 1",
        "tasks.long_process: 100% |####################| SUCCESS",
        "tasks.risky_task:   0% |                    | FAILURE PermanentError: cannot process 'fail'",
    ]
    assert "application/vnd.jupyter.widget-view+json" not in shown.data


# -- the aggregate bar and the progress formats users emit ---------------------------------------
def test_the_aggregate_bar_follows_its_tasks_own_progress():
    """Eight tasks at 40-73% are not an empty bar waiting for the first to end (big and small displays)."""
    from celerynb.display import _views
    from celerynb.display.tally import GroupTally
    from celerynb.tracking.snapshot import TaskSnapshot

    ids = [f"t{i}" for i in range(8)]
    snaps = [TaskSnapshot(tid, "PROGRESS", {"progress": 40 + i * 4.7}) for i, tid in enumerate(ids)]
    tally = GroupTally(ids)
    for snap in snaps:
        tally.update(snap)
    expected = sum(40 + i * 4.7 for i in range(8)) / 8
    assert tally.view().percent == pytest.approx(expected) and tally.view().done == 0
    assert _views.group_view([_views.task_view(s) for s in snaps]).percent == pytest.approx(expected)
    tally.update(TaskSnapshot("t0", "SUCCESS", 1))  # its 40% becomes 100%, counted once
    assert tally.view().percent == pytest.approx((100 + sum(40 + i * 4.7 for i in range(1, 8))) / 8)
    tally.update(TaskSnapshot("t1", "FAILURE", {"exc_type": "ValueError", "exc_message": ["x"]}))
    assert tally.view().percent == pytest.approx((200 + sum(40 + i * 4.7 for i in range(2, 8))) / 8)


@pytest.mark.parametrize("state, info, percent, detail", [
    ("PROGRESS", {"progress": 30, "status": "reading"}, 30, "PROGRESS 30% reading"),  # the guide's
    ("PROGRESS", {"current": 3, "total": 12}, 25, "PROGRESS 25%"),
    ("PROGRESS", {"pending": False, "current": 3, "total": 10, "percent": 30.0,  # celery-progress
                  "description": "chunk 3"}, 30, "PROGRESS 30% chunk 3"),
    ("PROGRESS", {"progress": 0.5}, 50, "PROGRESS 50%"),  # a fraction
    ("IN_PROGRESS", {"percent": 70, "message": "almost"}, 70, "IN_PROGRESS 70% almost"),  # a state of one's own
])
def test_progress_reports_in_the_formats_users_emit(state, info, percent, detail):
    from celerynb.display import _views
    from celerynb.tracking.snapshot import TaskSnapshot

    view = _views.task_view(TaskSnapshot("t", state, info, name="job"))
    assert view.percent == pytest.approx(percent) and view.detail == detail


@pytest.mark.slow
def test_a_display_nobody_waited_on_is_saved_final_by_nbclient(tmp_path):
    """The task ends while a later cell runs: nbclient records only that cell's messages, so the
    final update must go out as one of them (it still replaces the first cell's output by id)."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code) for code in (
        "import celerynb\nfrom celerynb.workers.tasks import long_process\n"
        "r = long_process.delay(list(range(10)), 0.1)\ncelerynb.progress(r)",
        "r.get(timeout=60)['status']",  # the task ends during this cell (or just before it)
        "import time\ntime.sleep(1)",
    )]
    env = dict(os.environ, CELERYNB_NONINTERACTIVE="0")  # widgets even under CI=true
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(env=env, cwd=str(tmp_path))
    (shown,) = [o for o in nb.cells[0].outputs if o.output_type == "display_data"]
    assert shown.data["text/plain"] == "tasks.long_process: 100% |####################| SUCCESS"
    assert "application/vnd.jupyter.widget-view+json" not in shown.data


def test_a_display_made_after_the_end_tells_how_long_the_tasks_took(cluster):
    from celerynb.workers.tasks import long_process

    r = long_process.delay([1, 2, 3, 4], delay=0.1)
    get_monitor(cluster.app).wait([r.id], timeout=30)
    disp = TextProgress([r.id], cluster.app)
    disp.refresh()
    assert disp.finished and 0.4 <= disp.elapsed() < 10  # the tasks' own span, not "0.0s"
    assert f"elapsed {_views.format_duration(disp.elapsed())}" in disp.summary_html()


def test_rows_of_one_task_name_are_told_apart_by_their_arguments(cluster):
    from celerynb.workers.tasks import analyze_content

    results = [analyze_content.delay(text) for text in ("one", "two")]
    disp = TextProgress([r.id for r in results], cluster.app)
    disp.wait(timeout=30)
    assert [v.name for v in disp.views()[0]] == ["tasks.analyze_content('one')", "tasks.analyze_content('two')"]
    assert "tasks.analyze_content(&#39;two&#39;)" in disp.summary_html()


def test_ci_displays_are_text_only(cluster, monkeypatch):
    from celerynb.workers.tasks import analyze_content

    monkeypatch.setenv("CELERYNB_NONINTERACTIVE", "1")
    r = analyze_content.delay("ci")
    disp = TextProgress([r.id], cluster.app)
    disp.wait(timeout=30)
    assert disp._bundle() == {"text/plain": "tasks.analyze_content: 100% |####################| SUCCESS"}
    monkeypatch.setenv("CELERYNB_NONINTERACTIVE", "0")
    assert "text/html" in disp._bundle()
