"""Notebook 7 (the classic Notebook's successor, built on JupyterLab) in headless Chromium: the
progress bar renders, moves and ends as its green summary, as in JupyterLab (test_browser.py).
Run by the version matrix (``nox -s "matrix(notebook-7)"``); skipped where Notebook 7 is absent."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, NOTEBOOK, _free_port, browser  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def notebook7():
    notebook = pytest.importorskip("notebook", reason="Notebook 7 is not installed (the matrix installs it)")
    if int(notebook.__version__.split(".")[0]) < 7:
        pytest.skip(f"notebook {notebook.__version__} is not Notebook 7")
    return notebook.__version__


@contextlib.contextmanager
def _notebook_server(tmp_path: Path, root: Path):
    """``jupyter notebook`` on a free port serving ``root``; stopped by PID after."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env["CELERYNB_NONINTERACTIVE"] = "0"  # the kernel must render widgets, even under CI=true
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path)
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "data")
    log = open(tmp_path / "notebook.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "notebook", "--no-browser", "--allow-root", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         "--expose-app-in-browser"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Notebook did not start: {(tmp_path / 'notebook.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield base, token
    finally:
        proc.send_signal(signal.SIGTERM)  # stops its kernels too
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_bar_moves_and_ends_green_in_notebook_7(browser, notebook7, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    (tmp_path / "config").mkdir()
    with _notebook_server(tmp_path / "config", root) as (base, token):
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(f"{base}/notebooks/{NOTEBOOK.name}?token={token}")
        expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
                               " === 'idle'", timeout=60_000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        bar = page.locator(".celerynb-progress .widget-hprogress .progress .progress-bar").first
        expect(bar).to_be_visible(timeout=60_000)
        expect(bar).to_have_attribute("style", re.compile(r"width:\s*([1-9]\d?(\.\d+)?)%"), timeout=60_000)
        summary = page.locator(".celerynb-progress-summary").first
        expect(summary).to_contain_text("SUCCESS", timeout=120_000)
        expect(summary.locator("[style*='width: 100%'], [style*='width:100%']").first).to_be_attached()
        expect(page.get_by_text("done SUCCESS")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / f"notebook{notebook7}-progress.png"), full_page=True)
        assert page.get_by_text("model not found").count() == 0
