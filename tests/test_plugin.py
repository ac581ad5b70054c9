"""The pytest plugin ``celerynb.testing``: a user's test files run with it (pytester, in a
subprocess so that Celery's process-wide worker state stays separate), and this suite uses
its fixtures directly."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from celery.result import EagerResult
from conftest import wait_for

pytest_plugins = ["celerynb.testing", "pytester"]

USER_TESTS = '''
import os
import pytest
from celery.result import EagerResult


def _record(cluster):
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"{cluster.server.pid}\\n")


def test_pool_mode_runs_on_the_worker(celerynb_app, celerynb_cluster):
    from celerynb.workers.tasks import long_process

    _record(celerynb_cluster)
    result = long_process.delay([1, 2, 3], delay=0.01)
    assert not isinstance(result, EagerResult)
    assert result.get(timeout=60)["processed"] == 3
    assert result.state == "SUCCESS"
    assert celerynb_cluster.broker_url.startswith("redis://:")
    assert celerynb_cluster.server.host == "127.0.0.1"


@pytest.mark.celerynb("eager")
def test_eager_mode_runs_in_the_test(celerynb_app):
    from celerynb.workers.tasks import long_process

    assert celerynb_app.conf.task_always_eager
    result = long_process.delay([1, 2], delay=0.0)
    assert isinstance(result, EagerResult)
    assert result.get()["processed"] == 2


def test_eager_switch_is_undone(celerynb_app):
    assert not celerynb_app.conf.task_always_eager


@pytest.mark.celerynb(mode="eager")
class TestEagerClass:
    def test_keyword_form(self, celerynb_app):
        assert celerynb_app.conf.task_always_eager


def test_the_same_cluster_all_session(celerynb_cluster):
    _record(celerynb_cluster)
    assert celerynb_cluster.running
'''

USER_APP_CONFTEST = '''
import pytest
from celery import Celery

pytest_plugins = ["celerynb.testing"]

userapp = Celery("userapp", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/0")


@userapp.task(name="userapp.add")
def add(x, y):
    return x + y


@pytest.fixture(scope="session")
def celerynb_user_app():
    return userapp


@pytest.fixture(scope="session")
def celerynb_cluster_options():
    return {"workers": 1, "pool": "solo"}
'''

USER_APP_TESTS = '''
import os
from conftest import add, userapp


def test_users_own_task_on_a_real_server(celerynb_app, celerynb_cluster):
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"{celerynb_cluster.server.pid}\\n")
    assert celerynb_app is userapp
    assert celerynb_cluster.workers[0].pool == "solo"
    assert add.delay(2, 3).get(timeout=60) == 5
    # the unreachable broker the app was configured with was replaced by the private server
    assert ":1/0" not in celerynb_app.conf.broker_url
'''


def _marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info.get("environ") or {}
            if env.get("CELERYNB_PLUGIN_RUN") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return found


def _run_user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str):
    """Run the user's tests in a subprocess; returns the outcome and the server PIDs it saw."""
    marker = uuid.uuid4().hex
    pid_file = pytester.path / "pids.txt"
    monkeypatch.setenv("CELERYNB_PLUGIN_RUN", marker)
    monkeypatch.setenv("PID_FILE", str(pid_file))
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)
    pids = {int(line) for line in pid_file.read_text().split()} if pid_file.exists() else set()
    # nothing the run started may survive it
    wait_for(lambda: not _marked_processes(marker), timeout=15, message="the user's test run to leave nothing")
    for pid in pids:
        wait_for(lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 timeout=15, message=f"server {pid} to exit")
    return result, pids


def test_user_suite_with_opt_in_flag(pytester, monkeypatch):
    pytester.makepyfile(test_user=USER_TESTS)
    result, pids = _run_user_suite(pytester, monkeypatch, "-p", "celerynb.testing", "-v")
    result.assert_outcomes(passed=5)
    assert len(pids) == 1, "one cluster (one server) for the whole session"


def test_users_own_app_with_pytest_plugins_line(pytester, monkeypatch):
    pytester.makeconftest(USER_APP_CONFTEST)
    pytester.makepyfile(test_userapp=USER_APP_TESTS)
    result, pids = _run_user_suite(pytester, monkeypatch)
    result.assert_outcomes(passed=1)
    assert len(pids) == 1


def test_bad_marker_value_is_a_clear_error(pytester, monkeypatch):
    pytester.makepyfile(test_bad='''
import pytest

@pytest.mark.celerynb("lazy")
def test_x(celerynb_app):
    pass
''')
    result, _ = _run_user_suite(pytester, monkeypatch, "-p", "celerynb.testing")
    result.stdout.fnmatch_lines(["*mode must be 'pool' or 'eager'*"])
    assert result.ret != 0


def test_marker_is_registered(pytester, monkeypatch):
    result, _ = _run_user_suite(pytester, monkeypatch, "-p", "celerynb.testing", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.celerynb(mode):*"])


def test_plugin_import_is_cheap_and_inert():
    """Listing the plugin costs nothing until a fixture is used: no server, no thread, no env change."""
    code = (
        "import os, sys, threading; env = dict(os.environ); n = threading.active_count();"
        "import celerynb.testing;"
        "assert dict(os.environ) == env; assert threading.active_count() == n;"
        "assert 'celerynb.workers.celery_app' not in sys.modules; assert 'IPython' not in sys.modules;"
        "from celerynb.cluster import server; assert server.shared_server(start=False) is None; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


# -- direct use of the fixtures in this suite ---------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _stop_plugin_cluster_after_module():
    """Other modules start their own clusters: leave none running behind this one."""
    yield
    import celerynb

    celerynb.stop()


def test_fixtures_directly_pool(celerynb_app, celerynb_cluster):
    from celerynb.workers.tasks import long_process

    assert celerynb_cluster.running and celerynb_cluster.workers
    assert celerynb_cluster.source == "embedded"
    result = long_process.delay([1, 2, 3, 4], delay=0.01)
    assert not isinstance(result, EagerResult)
    assert result.get(timeout=60)["processed"] == 4
    assert Path(f"/proc/{celerynb_cluster.server.pid}").exists()


@pytest.fixture
def eager_app(request):
    """The marker added at run time: this module loads the plugin after its decorators ran."""
    request.node.add_marker(pytest.mark.celerynb("eager"))
    return request.getfixturevalue("celerynb_app")


def test_fixtures_directly_eager(eager_app):
    from celerynb.workers.tasks import long_process

    assert eager_app.conf.task_always_eager
    result = long_process.delay([1], delay=0.0)
    assert isinstance(result, EagerResult)
    assert result.get()["processed"] == 1


def test_cluster_restarts_after_a_test_stopped_it(celerynb_app, _celerynb_handle):
    import celerynb

    first = _celerynb_handle.ensure()
    celerynb.stop()
    assert not first.running
    again = _celerynb_handle.ensure()
    assert again.running
    assert os.environ.get("CELERY_BROKER_URL") is None
