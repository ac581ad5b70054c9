"""celerynb in its users' CI: each documented recipe (docs/ci.md) runs for real on a small user
notebook (``%load_ext celerynb``, ``%%celery_task``, a progress display), with ``CI=true`` the way
GitHub Actions sets it, and leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest
from conftest import wait_for

from celerynb import config, nbval_sanitize

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "user_notebooks" / "word_count.ipynb"
BIN = Path(sys.executable).parent
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# -- helpers ------------------------------------------------------------------------------
def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info.get("environ") or {}
            if env.get("CELERYNB_USER_CI_RUN") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return found


def run_tool(args: list[str], cwd: Path, timeout: float = 300, **env_extra: str) -> subprocess.CompletedProcess:
    """Run a CI tool as a user's CI would (CI=true, no CELERYNB_NONINTERACTIVE), then assert that
    nothing it started (kernel, embedded server, workers) is still running."""
    marker = uuid.uuid4().hex
    env = dict(os.environ)
    env.pop("CELERYNB_NONINTERACTIVE", None)  # CI=true alone must be enough
    env.update({"CI": "true", "CELERYNB_USER_CI_RUN": marker, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.update(env_extra)
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wait_for(lambda: not _marked(marker), timeout=20, message=f"{args[0]}'s processes to exit")
    return out


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The user's project: the notebook and an empty pytest.ini (so this suite's conftest stays out)."""
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for o in outputs(nb):
        parts.append(o.get("text", "") if o["output_type"] == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def assert_text_only_and_done(nb: nbformat.NotebookNode, total: int) -> None:
    assert not [o for o in outputs(nb) if WIDGET_MIME in o.get("data", {})], "CI=true must not produce widgets"
    text = text_of(nb)
    assert "notebook.count_words: 100% |####################| SUCCESS" in text
    assert f"total words: {total}" in text
    assert "Stopped the celerynb cluster." in text
    assert not [o for o in outputs(nb) if o["output_type"] == "error"]


# -- the sanitize file ----------------------------------------------------------------------
def test_sanitize_cli_prints_writes_and_locates_the_file(tmp_path):
    shipped = nbval_sanitize.path()
    assert shipped.name == "nbval_sanitize.cfg" and shipped.is_file()
    printed = subprocess.run([sys.executable, "-m", "celerynb.nbval_sanitize"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert printed == shipped.read_text()
    where = subprocess.run([sys.executable, "-m", "celerynb.nbval_sanitize", "--path"], capture_output=True,
                           text=True, check=True, timeout=60).stdout.strip()
    assert Path(where) == shipped
    subprocess.run([sys.executable, "-m", "celerynb.nbval_sanitize", "-o", str(tmp_path / "s.cfg")], check=True,
                   capture_output=True, timeout=60)
    assert (tmp_path / "s.cfg").read_text() == printed
    bad = subprocess.run([sys.executable, "-m", "celerynb.nbval_sanitize", "-o", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "is a directory" in bad.stderr


def test_every_section_is_read_by_nbval():
    """A section nbval's parser cannot read (say, two spaces after "regex:") would be silently ignored."""
    from nbval.plugin import get_sanitize_patterns

    sections = [line for line in nbval_sanitize.text().splitlines() if line.startswith("[")]
    assert len(get_sanitize_patterns(nbval_sanitize.text())) == len(sections) == len(nbval_sanitize.patterns())


@pytest.mark.parametrize(("raw", "clean"), [
    ("broker:  redis://:s3cr3t@127.0.0.1:41234/0", "broker:  redis://:***@127.0.0.1:PORT/0"),
    ("broker:  redis://:***@127.0.0.1:5555/0", "broker:  redis://:***@127.0.0.1:PORT/0"),
    ("task id: a17f5aba-b1e2-4004-aa3f-3f15d6705b4c", "task id: TASK-ID"),
    ("elapsed 3s · ETA 1m 05s", "elapsed DURATION · ETA DURATION"),
    ("took 0.25 s, then 12ms", "took DURATION, then DURATION"),
    ("[2024-05-01 12:00:01,123: INFO/MainProcess] ready", "[TIMESTAMP: INFO/MainProcess] ready"),
    ("at 12:00:01", "at TIME"),
    ("workers: kernel31390-1 (thread, threads x4)", "workers: kernelPID-1 (thread, threads x4)"),
    ("kernel31390-1@ci-runner-7", "kernelPID-1@HOST"),
    ("celery@fv-az123.internal: OK", "celery@HOST: OK"),
    ("{'server_pid': 4242, 'pid': 17}", "{'server_pid': PID, 'pid': PID}"),
    ("log:     /tmp/celerynb-logs-4zmvfdxf/workers.log", "log:     TEMP-DIR/workers.log"),
    ("log:     /home/ann/.local/share/jupyter/runtime/celerynb-scratch/logs-4242-98765-ab_c1/workers.log",
     "log:     TEMP-DIR/workers.log"),
    ("<td>/tmp/celerynb-nbval-x1/celerynb-scratch/logs-77-5-q/workers.log</td>", "<td>TEMP-DIR/workers.log</td>"),
    ("<Thing at 0x7f00ab12>", "<Thing at 0xADDRESS>"),
    ("5 tasks: 100% |####| 5/5 done · SUCCESS 5", "5 tasks: 100% |####| 5/5 done · SUCCESS 5"),
])
def test_sanitize_patterns(raw, clean):
    assert nbval_sanitize.sanitize(raw) == clean


def test_status_output_is_stable_once_sanitized(cluster):
    """What `%celery status` prints changes between runs only where the file rewrites it."""
    from celerynb.display.status import ClusterStatus
    from celerynb.workers.celery_app import app

    text = repr(ClusterStatus(app, cluster))
    clean = nbval_sanitize.sanitize(text)
    assert "redis://:***@127.0.0.1:PORT/0" in clean
    assert str(cluster.server.port) not in clean and str(os.getpid()) not in clean
    assert "TEMP-DIR/workers.log" in clean


# -- non-interactive switches ---------------------------------------------------------------
@pytest.mark.parametrize(("env", "expected"), [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"CELERYNB_NONINTERACTIVE": "1"}, True),
    ({"CI": "true", "CELERYNB_NONINTERACTIVE": "0"}, False),
])
def test_noninteractive_switches(monkeypatch, env, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CELERYNB_NONINTERACTIVE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from celerynb.display.progress import widgets_available

    assert config.noninteractive() is expected
    if expected:
        assert not widgets_available()
    assert config.default_wait_timeout() == (config.NONINTERACTIVE_WAIT_TIMEOUT if expected else None)


def test_wait_timeout_setting(monkeypatch):
    monkeypatch.setenv("CELERYNB_WAIT_TIMEOUT", "42")
    assert config.default_wait_timeout() == 42.0
    monkeypatch.setenv("CELERYNB_WAIT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="CELERYNB_WAIT_TIMEOUT='soon' is not a number"):
        config.default_wait_timeout()


def test_progress_wait_has_a_default_timeout_in_ci(cluster, monkeypatch):
    import inspect

    import celerynb
    from celerynb.display._base import ProgressDisplay
    from celerynb.workers.tasks import long_process

    if "default_wait_timeout" not in inspect.getsource(ProgressDisplay.wait):
        pytest.xfail("needs the one-line default-timeout change in celerynb/display/_base.py (issue 9 report)")

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CELERYNB_WAIT_TIMEOUT", "0.5")
    result = long_process.delay(list(range(600)), delay=0.05)
    try:
        display = celerynb.progress(result)
        with pytest.raises(TimeoutError):
            display.wait()  # no timeout given: the non-interactive default applies
    finally:
        result.revoke()
        from celerynb.display._base import cancel_tasks

        cancel_tasks(cluster.app, [result.id])
        wait_for(lambda: result.ready(), timeout=60, message="the cancelled task to stop")


# -- the recipes ----------------------------------------------------------------------------
def test_nbval_recipe(workdir):
    sanitize = subprocess.run([sys.executable, "-m", "celerynb.nbval_sanitize", "--path"], capture_output=True,
                              text=True, check=True, timeout=60).stdout.strip()
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
            "--nbval-sanitize-with", sanitize, NOTEBOOK.name]
    out = run_tool(args, workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout or "passed" in out.stdout.splitlines()[-1]
    # the control: without the sanitize file the same notebook differs (ids, ports, pids, paths)
    raw = run_tool(args[:7] + [NOTEBOOK.name], workdir)
    assert raw.returncode == 1, raw.stdout[-2000:]
    assert "failed" in raw.stdout.splitlines()[-1]


def test_nbmake_recipe(workdir):
    out = run_tool([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbmake", "--nbmake-timeout=300",
                    "--overwrite", NOTEBOOK.name], workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert_text_only_and_done(nbformat.read(workdir / NOTEBOOK.name, as_version=4), total=12)


def test_papermill_recipe(workdir):
    out = run_tool([str(BIN / "papermill"), NOTEBOOK.name, "out.ipynb", "-p", "words", "5", "--kernel", "python3"],
                   workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    nb = nbformat.read(workdir / "out.ipynb", as_version=4)
    assert_text_only_and_done(nb, total=20)  # the injected parameter reached the task
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_nbconvert_execute_recipe(workdir):
    out = run_tool([str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute", "--output", "out.ipynb",
                    "--ExecutePreprocessor.timeout=300", NOTEBOOK.name], workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_text_only_and_done(nbformat.read(workdir / "out.ipynb", as_version=4), total=12)


def test_notebook_that_forgets_to_stop_still_finishes(workdir):
    """No `%celery stop` cell: the kernel still exits by itself and takes the server with it."""
    nb = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
    nb.cells = [c for c in nb.cells if "%celery stop" not in c.source]
    nbformat.write(nb, workdir / "forgetful.ipynb")
    out = run_tool([str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute", "--output", "out.ipynb",
                    "forgetful.ipynb"], workdir)  # run_tool asserts the server and workers are gone
    assert out.returncode == 0, out.stderr[-3000:]
    assert "total words: 12" in text_of(nbformat.read(workdir / "out.ipynb", as_version=4))


# -- a real kernel that forgets to stop: exits politely, leaves nothing ------------------------
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "task-running"])
def test_kernel_exits_promptly_with_a_forgotten_cluster(monkeypatch, busy):
    from _kernel import Kernel

    monkeypatch.delenv("CELERYNB_NONINTERACTIVE", raising=False)
    monkeypatch.setenv("CI", "true")
    kernel = Kernel()
    proc = kernel.km.provisioner.process
    try:
        setup = kernel.run(
            "%load_ext celerynb\n"
            "import json, celerynb\n"
            "from celerynb.workers.tasks import long_process\n"
            "r = long_process.delay([1, 2], delay=0.01)\n"
            "r.get(timeout=60)\n"
            "print(json.dumps({'server': celerynb.current().server.pid,"
            " 'widgets': __import__('celerynb.display.progress').display.progress.widgets_available()}))",
            timeout=120,
        )
        assert setup.status == "ok", setup.error
        info = json.loads(setup.stdout.strip().splitlines()[-1])
        assert info["widgets"] is False  # CI=true in the kernel's environment
        if busy:
            started = kernel.run("r = long_process.delay(list(range(1000)), delay=0.05)\n"
                                 "import time\n"
                                 "deadline = time.monotonic() + 30\n"
                                 "while r.state != 'PROGRESS' and time.monotonic() < deadline: time.sleep(0.02)\n"
                                 "print(r.state)", timeout=60)
            assert started.stdout.strip() == "PROGRESS"
    finally:
        kernel.shutdown()
    # jupyter_client kills a kernel that has not exited after shutdown_wait_time; exit code 0
    # means the kernel exited by itself, at once, without being killed.
    assert proc.wait(timeout=30) == 0
    wait_for(lambda: not psutil.pid_exists(info["server"])
             or psutil.Process(info["server"]).status() == psutil.STATUS_ZOMBIE,
             timeout=15, message="the embedded server to exit with the kernel")
