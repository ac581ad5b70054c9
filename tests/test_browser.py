"""A real browser: JupyterLab in headless Chromium runs a notebook and the bar moves to 100%."""

from __future__ import annotations

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


@pytest.fixture
def lab(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    pytest.importorskip("playwright")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    config = tmp_path / "jupyter_server_config.py"
    config.write_text(
        "c.LabApp.news_url = None\n"
        "c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'\n"
        "c.LabApp.extension_manager = 'readonly'\n"
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env["CELERYNB_NONINTERACTIVE"] = "0"  # the kernel must render widgets, even under CI=true
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         "--expose-app-in-browser", f"--config={config}"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield base, token
    proc.send_signal(signal.SIGTERM)  # stops its kernels too
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_bar_moves_and_ends_green_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}&reset")
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            bar = page.locator(".celerynb-progress .widget-hprogress .progress .progress-bar").first
            expect(bar).to_be_visible(timeout=60_000)
            # It moves while the task runs: some width strictly between 0% and 100%.
            expect(bar).to_have_attribute("style", re.compile(r"width:\s*([1-9]\d?(\.\d+)?)%"), timeout=60_000)
            expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"), timeout=120_000)
            expect(bar).to_have_class(re.compile(r"progress-bar-success"), timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-progress.png"), full_page=True)
        finally:
            browser.close()
