"""Display HTML comes from autoescaped Jinja2 templates: user data is always text, every
template is used, and no display module builds HTML itself.

No server: the displays follow a stand-in monitor that answers with fixed snapshots.
"""

from __future__ import annotations

import io
import re
import tokenize
import types
from pathlib import Path

import pytest
from celery import Celery

import celerynb.display
from celerynb import rendering
from celerynb.display import _base, table
from celerynb.display.progress import WidgetProgress
from celerynb.display.status import ClusterStatus, TaskList
from celerynb.display.table import TaskTable
from celerynb.display.task_logs import TaskLogs
from celerynb.display.text import TextProgress
from celerynb.display.timeline import Timeline
from celerynb.tracking.snapshot import TaskSnapshot
from celerynb.tracking.timing import TaskTiming

#: A fresh app takes in every shared task at finalize, including those other test modules
#: registered twice under one name: their warning is not about displays.
pytestmark = pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")

DISPLAY = Path(celerynb.display.__file__).parent
TEMPLATES = Path(rendering.__file__).parent / "templates"

#: User text and how it must come out in HTML: never as markup, never able to close an attribute.
PAYLOADS = {
    "<script>alert(1)</script>": "&lt;script&gt;alert(1)&lt;/script&gt;",
    'say "hi"': "say &#34;hi&#34;",
    "it's": "it&#39;s",
    "fish & chips": "fish &amp; chips",
}


class StandInMonitor:
    """What a display asks of the shared monitor, answered from fixed snapshots."""

    connected = True

    def __init__(self, app: Celery, snapshots: list[TaskSnapshot]) -> None:
        self.app = app
        self.snapshots = {s.task_id: s for s in snapshots}

    def snapshot(self, task_id: str) -> TaskSnapshot:
        return self.snapshots.get(task_id) or TaskSnapshot(task_id=task_id)

    def add_listener(self, *_args, **_kwargs):
        return lambda: None

    add_ticker = add_listener

    def track(self, _task_ids) -> None:
        pass

    read_now = track


def tasks_with(text: str, count: int) -> list[TaskSnapshot]:
    """Every kind of user data: task name (N), arguments (A), worker (W), result (R), exception
    message (E) and progress status (S), each marked by its letter."""
    kinds = [
        ("SUCCESS", f"R{text}"),
        ("FAILURE", {"exc_type": "ValueError", "exc_message": [f"E{text}"]}),
        ("PROGRESS", {"progress": 50, "status": f"S{text}"}),
    ]
    return [
        TaskSnapshot(task_id=f"{i:08d}-0000-0000-0000-000000000000", state=kinds[i % 3][0], info=kinds[i % 3][1],
                     name=f"N{text}", args=f"A{text}", worker=f"W{text}")
        for i in range(count)
    ]


@pytest.fixture
def follow(monkeypatch):
    """``follow(app, snapshots)``: displays made afterwards follow these snapshots, not a server."""

    def follow(app: Celery, snapshots: list[TaskSnapshot]) -> None:
        monitor = StandInMonitor(app, snapshots)
        for module in (_base, table):  # where displays look their monitor up
            monkeypatch.setattr(module, "get_monitor", lambda _app=None: monitor)

    return follow


def noop() -> None:
    """The body of a task registered under a hostile name."""


def every_display(follow, text: str) -> dict[str, str]:
    """The HTML of every display, each showing ``text`` in all the user data it has."""
    app = Celery("test_templates", set_as_current=False)
    few, many = tasks_with(text, 3), tasks_with(text, 15)
    many[-1] = TaskSnapshot(task_id=many[-1].task_id, state="STARTED", name=f"N{text}")  # one still running
    shown: dict[str, str] = {}
    follow(app, few + many)
    ids = [s.task_id for s in few]
    shown["progress summary"] = TextProgress(ids, app).summary_html()
    shown["progress summary of many"] = TextProgress([s.task_id for s in many], app).summary_html()
    widget = WidgetProgress([s.task_id for s in many], app)
    widget.refresh()
    shown["progress widget details"] = widget.details.children[0].value
    shown["progress widget counts"] = widget.group_label.value
    shown["progress widget, final"] = widget._bundle(True)["text/html"]
    few_widget = WidgetProgress(ids, app)
    few_widget.refresh()
    shown["progress widget rows"] = "".join(detail.value for _, _, detail in few_widget.rows)
    logged = TaskTable(ids, app=app)
    logged._logs.entries[ids[0]] = TaskLogs(ids[0], f"T{text}\n", level=40)  # as read from the backend
    shown["task table"] = logged._repr_html_()
    from celerynb.display.tree import TextTree, WidgetTree
    from celerynb.tracking.canvas import CanvasNode

    tree = CanvasNode("chain", children=[CanvasNode("task", i) for i in ids])
    shown["canvas tree summary"] = TextTree(tree, app).summary_html()
    tree_widget = WidgetTree(tree, app)
    tree_widget.refresh()
    shown["canvas tree widget"] = "".join(row[2].value + row[5].value for row in tree_widget.pool)
    shown["task logs"] = TaskLogs("t", f"T{text}\n", level=30)._repr_html_()
    shown["no task logs"] = TaskLogs("t", note="no logs")._repr_html_()

    worker = {"name": f"W{text}", "kind": "thread", "pool": f"P{text}", "concurrency": 2, "alive": True}
    running = {"running": True, "broker": f"redis://B{text}", "source": "embedded", "beat": True,
               "log_file": f"/L{text}", "workers": [worker], "queues": {f"Q{text}": 1}}
    cluster = types.SimpleNamespace(app=app, workers=[worker], processes=[], status=lambda: running)
    status = ClusterStatus(app, cluster)
    status.remote, status.tasks = {f"W{text}-process": True}, [f"N{text}"]
    shown["status card"] = status._repr_html_()
    shown["cluster card"] = rendering.render("cluster_card", status=running)
    shown["stopped cluster card"] = rendering.render("cluster_card", status={"running": False})

    task = app.task(name=f"N{text}", shared=False)(noop)  # shared: every later app would get it
    task.queue = f"Q{text}"  # set after binding: as a task option it is deprecated
    shown["task list"] = TaskList(app)._repr_html_()

    timed = Timeline([TaskTiming(f"t{i}", name=f"N{text}", state=state, worker=f"W{text}", slot=f"1/{i}",
                                 sent=10.0, started=10.0 + i, ended=11.0 + i)
                      for i, state in enumerate(["SUCCESS", "FAILURE"])])
    shown["timeline"] = timed._repr_html_()
    shown["timeline picture"] = timed.svg()
    return shown


#: Which user data each display shows (letters of :func:`tasks_with`, plus the cluster's
#: pool P, broker B, log L and queue Q): each must be there, escaped, or the test proves nothing.
SHOWN = {
    "progress summary": "NES",
    "progress summary of many": "NE",
    "progress widget details": "NES",
    "progress widget counts": "",
    "progress widget, final": "NE",
    "progress widget rows": "ES",
    "task table": "NAWRET",
    "canvas tree summary": "NES",
    "canvas tree widget": "NES",
    "task logs": "T",
    "no task logs": "",
    "status card": "NWPBLQ",
    "cluster card": "WPBLQ",
    "stopped cluster card": "",
    "task list": "NQ",
    "timeline": "NW",
    "timeline picture": "NW",
}


@pytest.mark.parametrize("text", PAYLOADS)
def test_user_data_is_escaped_in_every_display(follow, text):
    escaped = PAYLOADS[text]
    shown = every_display(follow, text)
    assert shown.keys() == SHOWN.keys()
    unescaped = [display for display, markup in shown.items() if text in markup]
    missing = [f"{display}: {letter}" for display, markup in shown.items() for letter in SHOWN[display]
               if letter + escaped not in markup]
    assert not unescaped, f"shown unescaped by {unescaped}"
    assert not missing, f"fields missing or not escaped: {missing}"
    assert "<script>" not in "".join(shown.values())


def test_every_template_is_used_and_renders(follow, monkeypatch):
    used: set[str] = set()
    get_template = rendering.environment.get_template

    def recording(name, *args, **kwargs):  # imports and includes come through here too
        used.add(name)
        return get_template(name, *args, **kwargs)

    monkeypatch.setattr(rendering.environment, "get_template", recording)
    shown = every_display(follow, "plain text")
    assert all(shown.values())
    files = {path.name for path in TEMPLATES.iterdir() if not path.name.startswith(".")}
    # Needs a live broker and its events: tests/test_cluster_monitor.py renders it and checks escaping.
    files -= {"cluster_monitor.html.j2"}
    assert files == used, f"unused: {sorted(files - used)}, missing: {sorted(used - files)}"
    assert all(name.endswith(".html.j2") for name in files)


_TAGS = re.compile(r"</?(?:div|span|table|thead|tbody|tr|td|th|b|br|code|h\d|p|a|ul|li|pre)\b[^<]*>", re.I)


def test_display_code_builds_no_html():
    """HTML lives in the templates only: no string in display/*.py holds a tag, none escapes by hand."""
    for path in sorted(DISPLAY.glob("*.py")):
        source = path.read_text()
        strings = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                   if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", None)]
        tagged = [s for s in strings if _TAGS.search(s)]
        assert not tagged, f"{path.name} builds HTML: {tagged}"
        assert "escape(" not in source, f"{path.name} escapes by hand"


def test_templates_are_autoescaped():
    assert rendering.environment.autoescape is True
    assert rendering.render("task_list", rows=[("<b>", "notebook", "q")]).count("&lt;b&gt;") == 1
