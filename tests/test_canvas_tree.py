"""The canvas tree (``celerynb.progress(chain/group/chord)``) against real in-kernel workers:
nested canvases to SUCCESS node by node, a failing member's branch red, cancel of a subtree,
round trips per refresh bounded at 100 and 10,000 members, and the widget in a real kernel."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import chain, chord, group
from conftest import command_calls, commands_sent, wait_for

import celerynb
from celerynb.display.tree import TextTree, WidgetTree
from celerynb.display.tree_model import MAX_ROWS, TreeModel
from celerynb.tracking import cancel as cancelling
from celerynb.tracking.canvas import GROUP, TASK, CanvasNode, from_signature
from celerynb.tracking.monitor import READ_NOW_MAX, TaskSnapshot, get_monitor


@pytest.fixture(scope="module")
def tasks():
    """A local cluster (in-kernel threads) and the tasks of these tests, for the whole module."""
    from celerynb.workers import urls
    from celerynb.workers.celery_app import app

    cluster = celerynb.start(concurrency=4)

    @app.task(name="tree.add", shared=False, bind=True)
    def add(self, x, y=0):
        self.update_state(state="PROGRESS", meta={"progress": 50})
        return x + y

    @app.task(name="tree.total", shared=False)
    def total(values, *more):
        return sum(values) if isinstance(values, list) else values

    @app.task(name="tree.boom", shared=False)
    def boom(*_args):
        raise ValueError("boom")

    @app.task(name="tree.slow", shared=False, bind=True)
    def slow(self, *_args):
        for _ in celerynb.track(range(200), task=self):
            time.sleep(0.05)
        return 1

    yield {"app": app, "add": add, "total": total, "boom": boom, "slow": slow, "cluster": cluster}
    for name in ("tree.add", "tree.total", "tree.boom", "tree.slow"):
        app.tasks.pop(name, None)
    celerynb.stop()
    urls.forget(app)


def rows_by_label(display):
    rows, _ = display.model.rows()
    return rows


def test_nested_canvas_reaches_success_with_every_node_right(tasks, tmp_path):
    add, total = tasks["add"], tasks["total"]
    workflow = chain(group(add.s(1, 1), add.s(2, 2)),
                     chord([chord([add.si(1), add.si(2)], total.s()), chord([add.si(3), add.si(4)], total.s())],
                           total.s()))
    display = celerynb.progress(workflow, widget=False)
    assert isinstance(display, TextTree)
    assert display.wait(timeout=30) == 10  # the chord of chords' body: (1+2) + (3+4)
    rows = rows_by_label(display)
    assert len(rows) == 17 and all(r.ready for r in rows)
    assert {r.bar_style for r in rows} == {"success"} and all(r.percent == 100 for r in rows)
    assert display.text() == "\n".join([
        "chord · 9 tasks: 100% |####################| 9/9 done · SUCCESS 9",
        "  header: group (2 members): 100% |####################| 2/2 done · SUCCESS 2",
        "    tree.add: 100% |####################| SUCCESS",
        "    tree.add: 100% |####################| SUCCESS",
        "  body: chord · 7 tasks: 100% |####################| 7/7 done · SUCCESS 7",
        "    header: group (2 members) · 6 tasks: 100% |####################| 6/6 done · SUCCESS 6",
        "      chord · 3 tasks: 100% |####################| 3/3 done · SUCCESS 3",
        "        header: group (2 members): 100% |####################| 2/2 done · SUCCESS 2",
        "          tree.add: 100% |####################| SUCCESS",
        "          tree.add: 100% |####################| SUCCESS",
        "        body: tree.total: 100% |####################| SUCCESS",
        "      chord · 3 tasks: 100% |####################| 3/3 done · SUCCESS 3",
        "        header: group (2 members): 100% |####################| 2/2 done · SUCCESS 2",
        "          tree.add: 100% |####################| SUCCESS",
        "          tree.add: 100% |####################| SUCCESS",
        "        body: tree.total: 100% |####################| SUCCESS",
        "    body: tree.total: 100% |####################| SUCCESS",
    ])
    html = display.summary_html()
    assert "celerynb-tree-summary" in html and html.count("celerynb-success") == 17
    # The saved metadata holds the tree's shape: reattach rebuilds the same tree.
    meta = display.output_metadata()["celerynb"]
    assert meta["display"] == "tree" and len(meta["task_ids"]) == 9
    again = celerynb.progress(CanvasNode.from_dict(meta["tree"]), widget=False)
    assert again.wait(timeout=10) == 10 and again.text() == display.text()
    # ... and so does %celery reattach from a saved notebook (a tree, not a flat bar).
    import nbformat

    from celerynb.notebook import reattach

    output = nbformat.v4.new_output("display_data", data={"text/plain": display.text()},
                                    metadata=display.output_metadata())
    path = tmp_path / "saved.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[output])]), path)
    (back,) = reattach.reattach(path, tasks["app"])
    assert isinstance(back, TextTree) and back.wait(timeout=10) == 10 and back.text() == display.text()
    # A TaskTable of the workflow: a row per task, all with the workflow's root id.
    table = celerynb.TaskTable(display.canvas.leaf_ids())
    roots = {row["root_id"] for row in table.rows()}
    assert len(table.rows()) == 9 and len(roots) == 1 and None not in roots
    assert all(row["parent_id"] for row in table.rows()[1:])
    mine = celerynb.TaskTable(display.canvas.leaf_ids(), root=roots.pop())
    other = celerynb.TaskTable(display.canvas.leaf_ids(), root="another")
    assert len(mine.rows()) == 9 and len(other.rows()) == 0
    for shown in (table, mine, other, back, display):  # tables tick until closed (the monitor stays busy)
        shown.close()


def test_a_failing_member_turns_its_branch_red_and_its_siblings_stay_green(tasks):
    add, boom, total = tasks["add"], tasks["boom"], tasks["total"]
    workflow = group(chain(add.si(1), add.s(2)),
                     chain(add.si(1), boom.s(), group(add.s(3), add.s(4))),
                     chord([add.si(1), add.si(2)], total.s()))
    display = celerynb.progress(workflow, widget=False)
    display.wait(timeout=30)
    rows = {r.label: r for r in rows_by_label(display)}
    assert rows["group (3 members) · 9 tasks"].bar_style == "danger"
    assert rows["chain (3 steps) · 4 tasks"].bar_style == "danger"
    assert rows["chain (2 steps) · 2 tasks"].bar_style == "success"
    assert rows["chord · 3 tasks"].bar_style == "success"
    assert rows["tree.boom"].detail == "FAILURE ValueError: boom"
    # The group after the failed step is never sent by Celery: the tree says so and ends.
    assert display.text().count("NOT RUN (an earlier step did not succeed)") == 2
    # ...and its inner rows count them with the same words, not as REVOKED.
    assert rows["chain (3 steps) · 4 tasks"].detail == "4/4 done · SUCCESS 1 · FAILURE 1 · NOT RUN 2", rows
    assert "REVOKED" not in rows["group (3 members) · 9 tasks"].detail
    assert display.finished


def test_cancel_of_a_subtree_stops_its_members_only(tasks):
    add, slow = tasks["add"], tasks["slow"]
    workflow = group(chain(slow.si(), slow.si(), slow.si()), chain(add.si(1), add.s(2)))
    display = celerynb.progress(workflow, widget=False)
    model = display.model
    target = next(n for n in model.nodes if n.kind == "chain" and len(n.leaves) == 3)
    first = target.leaves[0]
    wait_for(lambda: display.monitor.snapshot(first).state == "PROGRESS", timeout=20, message="slow running")
    assert display.cancel_node(target.index) == 3
    display.wait(timeout=30)
    states = {tid: model.state(tid).state for tid in display.ids}
    assert [states[t] for t in target.leaves] == ["REVOKED"] * 3
    others = [t for t in display.ids if t not in target.leaves]
    assert [states[t] for t in others] == ["SUCCESS", "SUCCESS"]
    assert not any(cancelling.requested(t) for t in others)  # only the subtree was cancelled
    assert display.text().splitlines()[1].startswith("  chain (3 steps) · 3 tasks: 100%")
    details = [line.rsplit("| ", 1)[1] for line in display.text().splitlines()[2:5]]
    assert all(d.startswith("REVOKED (cancelled") for d in details), details  # before it ran, or stopped


def test_a_failure_turns_the_branch_red_at_once():
    """Model level: red as soon as a member failed, while the rest still runs."""
    tree = CanvasNode(GROUP, children=[
        CanvasNode("chain", children=[CanvasNode(TASK, "a1", "t"), CanvasNode(TASK, "a2", "t")]),
        CanvasNode("chain", children=[CanvasNode(TASK, "b1", "t"), CanvasNode(TASK, "b2", "t")]),
    ])
    model = TreeModel(tree)
    model.update(TaskSnapshot(task_id="a1", state="FAILURE", info={"exc_type": "E", "exc_message": ["x"]}))
    model.update(TaskSnapshot(task_id="b1", state="PROGRESS", info={"progress": 40}))
    root, left, a1, a2, right, b1, b2 = model.rows()[0]
    assert (root.bar_style, left.bar_style, right.bar_style) == ("danger", "danger", "info")
    assert a2.detail == "NOT RUN (an earlier step did not succeed)" and left.ready
    assert right.percent == 20 and root.percent == 60  # members' own PROGRESS counts (40% of one of two)
    assert not model.finished and model.unfinished(model.root) == ["b1", "b2"]


def test_a_cancel_names_the_reason_even_after_an_earlier_step_ended_first():
    """Model level: a cancelled chain's first task is revoked before the cancel marks the later
    steps: they never ran either way, and say "cancelled", not "an earlier step did not succeed"."""
    model = TreeModel(CanvasNode("chain", children=[CanvasNode(TASK, t, "t") for t in ("c1", "c2", "c3")]))
    model.update(TaskSnapshot(task_id="c1", state="REVOKED", info={}))  # the monitor's thread was first
    model.cancelled(["c2", "c3"])
    chain_row, *_, c2, c3 = model.rows()[0]
    assert c2.detail == c3.detail == "REVOKED (cancelled before it ran)"
    assert "NOT RUN" not in chain_row.detail and chain_row.detail.endswith("REVOKED 3"), chain_row.detail


def _tree_of(ids: list[str]) -> CanvasNode:
    return CanvasNode("chain", children=[CanvasNode(TASK, ids[0], "tree.add"),
                                         CanvasNode(GROUP, children=[CanvasNode(TASK, t, "tree.add") for t in ids[1:]])])


@pytest.mark.parametrize("members", [100, 10_000])
def test_round_trips_per_refresh_are_bounded_whatever_the_size(tasks, members):
    """Backend reads while the tree refreshes (states changing under it) are the same at 100 and
    10,000 members: states are pushed to the shared monitor, a refresh reads nothing."""
    app = tasks["app"]
    url = app.conf.result_backend
    ids = [str(uuid.uuid4()) for _ in range(members + 1)]
    read_before = get_monitor(app).stats["mget_keys"]
    display = TextTree(_tree_of(ids), app)
    monitor = display.monitor
    # The first reads (not a refresh) are done before counting: the display's own read of the first
    # READ_NOW_MAX ids for its first picture, then the monitor thread's read of every id.
    first_reads = min(len(ids), READ_NOW_MAX) + len(ids)
    wait_for(lambda: not monitor._to_subscribe and monitor.stats["mget_keys"] - read_before >= first_reads,
             message="first read")
    before, sweeps_before = command_calls(url), monitor.stats["reconciles"]
    for step in range(10):  # ten refreshes, each after 5 tasks moved (their states are pushed)
        moved = ids[step * 5:step * 5 + 5]
        for tid in moved:
            app.backend.store_result(tid, {"progress": 10 + step}, "PROGRESS")
        wait_for(lambda moved=moved: all(display.model.state(t).state == "PROGRESS" for t in moved),
                 message="pushed states")
        display.refresh(background=False)
    sent = commands_sent(before, command_calls(url))
    reads = sum(n for name, n in sent.items() if name in ("mget", "get", "hget", "hmget", "exists"))
    sweeps = monitor.stats["reconciles"] - sweeps_before
    # Only the monitor's timed reconcile reads (one MGET of a 1,000-id slice per sweep, every 2 s;
    # one more if a sweep read just before the count ended and had not counted itself yet): never
    # one read per refresh or per member (10,000 would read thousands).
    assert reads <= sweeps + 1, (sent, sweeps)
    assert display.model.rows()[0][0].percent > 0
    rows, more = display.model.rows()
    assert len(rows) <= MAX_ROWS
    display.close()


def test_widget_tree_is_a_fixed_number_of_widgets(tasks):
    ids = [str(uuid.uuid4()) for _ in range(10_001)]
    display = WidgetTree(_tree_of(ids), tasks["app"])
    display.refresh()
    assert len(display.pool) <= MAX_ROWS and len(display.rows_box.children) == 9
    assert display.model.label(display.model.nodes[2]).startswith("group (10,000 members)")
    display._toggle(0)  # collapse the root
    assert len(display.rows_box.children) == 1
    display.close()


def test_signature_tree_keeps_celerys_ids(tasks):
    add = tasks["add"]
    sig = chain(add.si(1), group(add.s(1), add.s(2)), tasks["total"].s())
    sig.freeze()
    tree = from_signature(sig, tasks["app"])
    assert [n.kind for n in tree.children] == ["task", "chord"]  # Celery made group + task a chord
    result = sig.apply_async()
    assert result.id == tree.result_shape() and set(tree.leaf_ids()) >= {result.id}
    assert result.get(timeout=20) == 5  # (1 + 1) + (1 + 2)
    # A result already sent: its links give the same chain (a TaskTable shows a row per task).
    again = celerynb.TaskTable(result)
    assert [row["id"] for row in again.rows()] == tree.leaf_ids()
    assert {row["root_id"] for row in again.rows()} == {result.id}
    again.close()


@pytest.mark.slow
def test_the_widget_tree_displays_in_a_real_kernel(kernel):
    reply = kernel.run(
        "import os; os.environ['CELERYNB_NONINTERACTIVE'] = '0'\n"  # widgets, even under CI=true
        "import celerynb\nfrom celery import chain, group\n"
        "from celerynb.workers.tasks import long_process\n"
        "step = long_process.si([1, 2], delay=0.05)\n"
        "d = celerynb.progress(group(chain(step, step.clone()), step.clone()))\n"
        "import time\n"
        "deadline = time.monotonic() + 30\n"  # rows are drawn by the monitor's thread
        "while len(d.pool) < 5 and time.monotonic() < deadline: time.sleep(0.02)\n"
        "print(type(d).__name__, len(d.pool))", timeout=90)
    assert reply.status == "ok", reply.error
    assert reply.stdout.split() == ["WidgetTree", "5"]
    (shown,) = [r for r in reply.results if "application/vnd.jupyter.widget-view+json" in r]
    assert shown["text/plain"].startswith("group (2 members) · 3 tasks:")
    reply = kernel.run("d.wait(timeout=30); print(d.text().splitlines()[0]); celerynb.stop()", timeout=60)
    assert reply.stdout.strip() == "group (2 members) · 3 tasks: 100% |####################| 3/3 done · SUCCESS 3"
