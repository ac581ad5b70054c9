"""Import boundaries: a worker process never loads IPython or widgets; importing starts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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


def test_star_import_keeps_the_builtin_map_and_brings_the_exceptions():
    code = (
        "import builtins\n"
        "from celerynb import *\n"
        "assert map is builtins.map, map\n"
        "import celerynb\n"
        "assert callable(celerynb.map) and celerynb.map is not builtins.map\n"
        "names = ['ClusterError', 'ServerError', 'WorkerProcessError', 'BrokerUnreachable', 'AppNotFound',\n"
        "         'BulkSubmitError', 'ArgumentNotSerializable', 'BackendNotObservable', 'CellRefused',\n"
        "         'TaskCancelled', 'raise_if_cancelled']\n"
        "missing = [n for n in names if n not in globals()]\n"
        "assert not missing, missing\n"
        "assert all(issubclass(globals()[n], Exception) for n in names if n != 'raise_if_cancelled')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr[-1500:]


def test_exported_exceptions_are_the_ones_raised():
    import celerynb
    from celerynb.bulk.calls import BulkSubmitError
    from celerynb.cluster.local import ClusterError
    from celerynb.config.reachability import BrokerUnreachable

    assert celerynb.ClusterError is ClusterError and celerynb.BrokerUnreachable is BrokerUnreachable
    assert celerynb.BulkSubmitError is BulkSubmitError


def test_importing_test_modules_registers_no_task(tmp_path):
    """Tests register their own tasks in fixtures (``conftest.registered``), never at import: on
    celerynb's app, or (through Celery's shared tasks) on every app made afterwards."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from celery import Celery\n"
        "from celerynb.workers.celery_app import app\n"
        "import celerynb.workers.tasks  # celerynb's own predefined tasks: the app's, not the tests'\n"
        "before, baseline = set(app.tasks), set(Celery('baseline').tasks)\n"
        "import test_bulk, test_fuzz, test_started\n"
        "fresh = Celery('fresh')\n"
        "print(sorted(set(app.tasks) - before), sorted(set(fresh.tasks) - baseline))\n"
    )
    # conftest makes its session directory at import: under tmp_path, removed with it.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip().splitlines()[-1] == "[] []"
