"""``celerynb.timeline``: timing data of tasks on two real workers, its summary, its picture.

One cluster for the module: an in-kernel worker (threads pool, 2 slots) on one queue and a
``celery worker`` process (prefork, 2 children) on another, so each task lands where the test
says. Their tasks run concurrently; the timeline must put each on its own worker slot.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET

import pytest

import celerynb
from celerynb.cluster import apps
from celerynb.cluster.processes import WorkerProcess
from celerynb.display.timeline import Timeline
from celerynb.rendering.theme import THEME
from celerynb.tracking.submitted import enable_submit_log
from celerynb.tracking.timing import TaskTiming
from celerynb.workers import tasks

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def two_workers():
    from celerynb.workers.celery_app import app

    suffix = uuid.uuid4().hex[:8]
    inkernel_q, process_q = f"tl-k-{suffix}", f"tl-p-{suffix}"
    cluster = celerynb.LocalCluster(app, workers=1, concurrency=2, queues=[inkernel_q]).start()
    proc = WorkerProcess(app_path=apps.import_path(app), broker_url=cluster.broker_url,
                         result_backend=app.conf.result_backend, name=f"tlproc-{suffix}@localhost",
                         concurrency=2, queues=[process_q])
    try:
        proc.start(app, timeout=60)
        yield app, cluster, proc, inkernel_q, process_q
    finally:
        proc.stop()
        cluster.stop()
        celerynb.stop()


@pytest.fixture(scope="module")
def ran(two_workers):
    """Four 0.3 s tasks per worker, a failing one on each, a batched map on the process."""
    app, cluster, proc, inkernel_q, process_q = two_workers
    enable_submit_log()  # as %load_ext celerynb does: when each task was sent is known
    sent = []
    for queue in (inkernel_q, process_q):
        sent += [tasks.long_process.apply_async(([0, 1, 2],), {"delay": 0.1}, queue=queue) for _ in range(4)]
        sent.append(tasks.analyze_content.apply_async((123,), queue=queue))  # TypeError: a FAILURE
    mapped = celerynb.map(tasks.analyze_content, [f"text {i}" for i in range(40)], batch=10, queue=process_q)
    view = celerynb.timeline(sent + [mapped], timeout=60)
    return app, cluster, proc, sent, mapped, view


def test_lanes_per_worker_slot_and_bars_inside_the_wall_window(ran):
    app, cluster, proc, sent, mapped, view = ran
    by_id = {r.task_id: r for r in view.records}
    assert len(by_id) == len(sent) + 40
    assert all(r.timed and r.ended is not None and r.ended >= r.started for r in view.records)
    inkernel_node = cluster.workers[0].hostname
    workers = {r.worker for r in view.records}
    assert workers == {inkernel_node, proc.name}
    lanes = {r.lane for r in view.records}
    # Two threads in the kernel (one pid), two prefork children (two pids).
    kernel_lanes = [slot for worker, slot in lanes if worker == inkernel_node]
    proc_lanes = [slot for worker, slot in lanes if worker == proc.name]
    assert len(kernel_lanes) == 2 and len({s.split("/")[0] for s in kernel_lanes}) == 1
    assert len(proc_lanes) == 2 and len({s.split("/")[0] for s in proc_lanes}) == 2
    # Tasks of one lane never overlap: a slot runs one task at a time.
    for lane in lanes:
        mine = sorted((r for r in view.records if r.lane == lane), key=lambda r: r.started)
        assert all(a.ended <= b.started + 1e-3 for a, b in zip(mine, mine[1:], strict=False))
    # Each batched item is a task of its own, with its own timing on the process's slots.
    items = [by_id[r.id] for r in mapped.results]
    assert {r.worker for r in items} == {proc.name} and len({r.started for r in items}) > 1
    # Sent times come from this kernel's submit log: every bar starts after it was sent.
    assert all(r.sent is not None and r.sent <= r.started + 0.05 for r in view.records)
    summary = view.summary
    begin = min(min(r.sent, r.started) for r in view.records)
    end = max(r.ended for r in view.records)
    assert summary.wall == pytest.approx(end - begin)
    assert all(begin <= r.started and r.ended <= begin + summary.wall + 1e-9 for r in view.records)


def test_summary_is_consistent_with_the_data(ran):
    *_, view = ran
    s = view.summary
    busy = sum(r.ended - r.started for r in view.records)
    assert s.busy == pytest.approx(busy)
    assert s.slots == 4 and s.workers == 2 and s.tasks == s.timed == len(view.records)
    assert s.speedup == pytest.approx(busy / s.wall) and s.efficiency == pytest.approx(s.speedup / 4)
    # 8 tasks of >= 0.3 s on 4 slots run side by side: the speedup is well above 1.
    assert 1.3 < s.speedup <= 4.0
    assert s.counts == {"FAILURE": 2, "SUCCESS": 48}
    slowest = sorted(view.records, key=lambda r: -r.runtime)[:3]
    assert [r.task_id for r in s.slowest] == [r.task_id for r in slowest]
    rows = view.rows()
    assert len(rows) == len(view.records) and sum(r["runtime"] for r in rows) == pytest.approx(busy)
    assert {r["lane"] for r in rows} == {f"{w} #{i}" for w in {r.worker for r in view.records} for i in (1, 2)}
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            view.to_dataframe()
    else:
        frame = view.to_dataframe()
        assert len(frame) == len(rows) and frame["runtime"].sum() == pytest.approx(busy)


def test_picture_colours_states_and_survives_saving(ran):
    *_, sent, _, view = ran
    bundle = view._repr_mimebundle_()
    svg = bundle["image/svg+xml"]
    root = ET.fromstring(svg)  # well-formed, standalone
    rects = root.findall(f"{SVG}rect")
    titled = {r.find(f"{SVG}title").text: r.get("fill") for r in rects if r.find(f"{SVG}title") is not None}
    failed = [title for title in titled if "FAILURE" in title]
    assert failed and {titled[t] for t in failed} == {THEME.fill("danger")}
    assert {fill for title, fill in titled.items() if "SUCCESS" in title} == {THEME.fill("success")}
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert any(label and label.endswith(" s") for label in labels)  # the axis, in seconds
    assert "FAILURE" in labels and "SUCCESS" in labels and "queued" in labels  # the legend
    assert any("speedup" in (label or "") for label in labels)
    # The HTML shows the same picture as an image (sanitizers keep <img>, drop inline <svg>).
    html = bundle["text/html"]
    assert "<svg" not in html
    data = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(data).decode() == svg
    assert "slowest:" in html and "tasks.long_process" in html


def test_text_plain_is_deterministic(ran):
    *_, view = ran
    text = repr(view)
    assert text == "<Timeline 50 tasks on 2 workers, 4 slots: FAILURE 2, SUCCESS 48>"
    assert repr(view.refresh()) == text


def test_svg_escapes_user_data():
    hostile = "<script>alert(1)</script>&"
    records = [TaskTiming("a", name=hostile, state="SUCCESS", worker="w<b>@h", slot="1/x", sent=10.0,
                          started=10.5, ended=11.5),
               TaskTiming("b", name="ok", state="FAILURE", worker="w<b>@h", slot="1/y", started=10.6, ended=11.0)]
    view = celerynb.timeline(records)
    svg = view.svg()
    assert "<script>" not in svg and "<b>" not in svg and "&lt;script&gt;" in svg
    root = ET.fromstring(svg)
    assert any(hostile in (t.text or "") for t in root.iter(f"{SVG}title"))  # the text survives, as text
    html = view._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert repr(view) == "<Timeline 2 tasks on 1 worker, 2 slots: FAILURE 1, SUCCESS 1>"


def test_tasks_without_timing_say_so():
    view = Timeline([TaskTiming("x", name="theirs.task", state="SUCCESS", worker="w@h")])
    assert "no timing" in view._repr_html_()
    assert "image/svg+xml" not in view._repr_mimebundle_()
    assert repr(view) == "<Timeline 1 task on 0 workers, 0 slots: SUCCESS 1; 1 without timing>"


def test_mixed_input_is_refused():
    with pytest.raises(TypeError, match="not both"):
        celerynb.timeline([TaskTiming("a"), "some-id"])


def test_running_tasks_are_drawn_up_to_now_and_counted_apart():
    records = [TaskTiming("done", name="a", state="SUCCESS", worker="w@h", slot="1/a", sent=0.0, started=1.0, ended=2.0),
               TaskTiming("busy", name="b", state="PROGRESS", worker="w@h", slot="1/b", sent=0.0, started=1.5)]
    view = Timeline(records, now=4.0)
    s = view.summary
    assert (s.running, s.wall, s.busy) == (1, 4.0, 1.0 + 2.5)
    assert "1 still running" in view._repr_html_()
    root = ET.fromstring(view.svg())
    running = [r for r in root.findall(f"{SVG}rect") if "PROGRESS" in (getattr(r.find(f"{SVG}title"), "text", "") or "")]
    assert len(running) == 1 and running[0].get("fill") == THEME.fill("info")
