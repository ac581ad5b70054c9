"""Displays come back after a kernel restart: ``%celery reattach`` reads the saved notebook.

The cluster outlives the first kernel (``celerynb up``), as it does for a user who restarts
the kernel while a ``celerynb up`` cluster keeps their tasks; the second kernel is new.
"""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

FIRST = [
    "%load_ext celerynb\n%celery connect auto",
    "import celerynb\nfrom celerynb.workers.tasks import analyze_content, long_process\n"
    "done = [analyze_content.delay(f'text {i}') for i in range(3)]\n"
    "bars = celerynb.progress(done, wait=True)",
    "celerynb.TaskTable(done)",
    "later = long_process.delay(list(range(3000)), delay=0.01)  # 30 s: still running at the restart\n"
    "celerynb.progress(later)",
]


@pytest.fixture(scope="module")
def up_cluster():
    subprocess.run([sys.executable, "-m", "celerynb", "up", "--detach", "--workers", "1"],
                   check=True, capture_output=True, text=True, timeout=90)
    yield
    subprocess.run([sys.executable, "-m", "celerynb", "down"], check=True, capture_output=True, timeout=60)


def _run(cells: list[str], path, env: dict[str, str], allow_errors: bool = False) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=allow_errors).execute(env=env, cwd=str(path.parent))
    nbformat.write(nb, path)
    return nb


def test_reattach_after_a_restart_shows_each_display_with_current_states(up_cluster, tmp_path):
    import os

    env = {**os.environ, "CELERYNB_NONINTERACTIVE": "1"}
    saved = tmp_path / "analysis.ipynb"
    first = _run(FIRST, saved, env)
    metas = [o.metadata.get("celerynb") for c in first.cells for o in c.outputs if o.metadata.get("celerynb")]
    assert [m["display"] for m in metas][:2] == ["progress", "table"] and len(metas[0]["task_ids"]) == 3
    assert set(metas[0]) == {"display", "task_ids", "total", "app", "ended"}  # ids, nothing of the server

    again = _run(["%load_ext celerynb\n%celery connect auto --no-workers",
                  f"%celery reattach {saved.name}",
                  "%celery reattach missing.ipynb"], tmp_path / "restarted.ipynb", env, allow_errors=True)
    texts = [o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in again.cells[1].outputs]
    shown = "\n".join(texts)
    assert "cell 2: progress of 3 task(s)" in shown and "cell 3: table of 3 task(s)" in shown
    assert shown.count("tasks.analyze_content('text") == 3 and "3/3 done · SUCCESS 3" in shown
    assert "<TaskTable 3 tasks: SUCCESS 3>" in shown
    assert "cell 4: progress of 1 task(s)\ntasks.long_process:" in shown  # followed again, still running
    (error,) = again.cells[2].outputs
    assert error["text"] == "UsageError: %celery reattach: missing.ipynb does not exist: pass the path of a saved .ipynb.\n"


def test_expired_results_say_so(cluster, tmp_path):
    """A display that had ended, whose ids the backend no longer holds, says its results expired."""
    import uuid

    from celerynb.display import saved as saved_module
    from celerynb.notebook import reattach

    ids = [str(uuid.uuid4()) for _ in range(2)]
    output = nbformat.v4.new_output("display_data", data={"text/plain": "..."},
                                    metadata=saved_module.output_metadata("progress", ids, cluster.app, True))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("progress(x)", outputs=[output])])
    path = tmp_path / "old.ipynb"
    nbformat.write(nb, path)
    (display,) = reattach.reattach(path, cluster.app)
    display.wait(timeout=30)  # nothing left to wait for: the display ends
    assert display.text().count("LOST (its result expired)") == 2 and display.finished
