"""Import boundaries: a worker process never loads IPython or widgets; importing starts nothing."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_worker_imports_stay_free_of_ipython_and_widgets():
    loaded = _modules_after("import celerynb.workers.celery_app, celerynb.workers.tasks, celerynb.workers.track")
    assert "celerynb.workers.tasks" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("IPython", "ipywidgets", "ipykernel")}


def test_public_names_load_lazily():
    loaded = _modules_after("import celerynb; celerynb.LocalCluster")
    assert "ipywidgets" not in loaded and "celerynb.display.progress" not in loaded
    loaded = _modules_after("import celerynb; celerynb.progress, celerynb.TaskTable, celerynb.wait")
    assert "celerynb.display.progress" in loaded


def test_importing_starts_no_server():
    code = "import celerynb, celerynb.workers.tasks, psutil; print(len(psutil.Process().children()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "0"
