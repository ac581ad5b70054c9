"""A real browser: JupyterLab in headless Chromium runs a notebook, the bar moves to 100%, and the
notebook saved through the UI reopens in a fresh JupyterLab (and nbconvert) with its final states."""

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

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
NOTEBOOK = Path(__file__).with_name("notebooks_e2e") / "browser_progress.ipynb"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyter_frontend(tmp_path: Path, root: Path, app: str, *extra: str, env: dict[str, str] | None = None):
    """``jupyter <app>`` (lab, notebook) on a free port serving ``root``, with its own config and data
    dirs; yields (base URL, token) once it answers; stopped by PID after."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, **(env or {})}
    env["CELERYNB_NONINTERACTIVE"] = "0"  # the kernel must render widgets, even under CI=true
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path)
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "data")  # fresh: no trust database, no workspace
    log_path = tmp_path / f"{app}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         "--expose-app-in-browser", *extra],
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
                    pytest.fail(f"jupyter {app} did not start: {log_path.read_text()[-2000:]}")
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


def _jupyterlab(tmp_path: Path, root: Path):
    """JupyterLab serving ``root``, quiet (no news, no update check, read-only extension manager)."""
    tmp_path.mkdir(parents=True, exist_ok=True)  # for its config file
    config = tmp_path / "jupyter_server_config.py"
    config.write_text(
        "c.LabApp.news_url = None\n"
        "c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'\n"
        "c.LabApp.extension_manager = 'readonly'\n"
    )
    return jupyter_frontend(tmp_path, root, "lab", f"--config={config}",
                            env={"JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")})


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, base: str, token: str, name: str):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.goto(f"{base}/lab/tree/{name}?token={token}&reset")
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
    return page


def test_bar_moves_ends_green_and_the_saved_notebook_reopens_with_its_final_states(browser, tmp_path):
    """Run in JupyterLab, save through the UI, reopen in a fresh JupyterLab: the outputs are the
    final states (never "model not found"), in Lab and in nbconvert's HTML."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    with _jupyterlab(tmp_path / "run", root) as (base, token):
        page = _open(browser, base, token, NOTEBOOK.name)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        bar = page.locator(".celerynb-progress .widget-hprogress .progress .progress-bar").first
        expect(bar).to_be_visible(timeout=60_000)
        # It moves while the task runs: some width strictly between 0% and 100%.
        expect(bar).to_have_attribute("style", re.compile(r"width:\s*([1-9]\d?(\.\d+)?)%"), timeout=60_000)
        # Once it ends, the widget gives way to its final picture: a full green bar.
        summary = page.locator(".celerynb-progress-summary").first
        expect(summary).to_contain_text("SUCCESS", timeout=120_000)
        expect(summary.locator("[style*='width: 100%'], [style*='width:100%']").first).to_be_attached()
        expect(page.get_by_text("done SUCCESS")).to_be_visible(timeout=60_000)
        expect(page.locator(".celerynb-task-table").first).to_contain_text("SUCCESS", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-progress.png"), full_page=True)
        page.keyboard.press("Control+s")
        expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=30_000)
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copy(root / NOTEBOOK.name, saved / NOTEBOOK.name)
    with _jupyterlab(tmp_path / "reopen", saved) as (base, token):
        page = _open(browser, base, token, NOTEBOOK.name)
        expect(page.locator(".celerynb-progress-summary").first).to_contain_text("SUCCESS")
        expect(page.locator(".celerynb-task-table").first).to_contain_text("SUCCESS")
        assert page.get_by_text("model not found").count() == 0
        # Lab sanitizes a notebook it does not trust (this fresh one trusts nothing): the bar
        # must keep its fill (plain colours; ``var(...)`` values are dropped).
        fill = page.locator(".celerynb-progress-summary .celerynb-bar").first
        assert fill.evaluate("e => getComputedStyle(e).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
        assert fill.evaluate("e => e.getBoundingClientRect().width") > 50
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-reopened.png"), full_page=True)
    out = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir", str(tmp_path),
                          str(saved / NOTEBOOK.name)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    html = (tmp_path / NOTEBOOK.with_suffix(".html").name).read_text()
    assert "celerynb-progress-summary" in html and "celerynb-task-table" in html
    assert html.count("SUCCESS") >= 2 and "PENDING" not in html
