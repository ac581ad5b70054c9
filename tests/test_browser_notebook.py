"""Notebook 7 (the classic Notebook's successor, built on JupyterLab) in headless Chromium: the
progress bar renders, moves and ends as its green summary, as in JupyterLab (test_browser.py).
Run by the version matrix (``nox -s "matrix(notebook-7)"``); skipped where Notebook 7 is absent."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, NOTEBOOK, browser, jupyter_frontend  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def notebook7():
    notebook = pytest.importorskip("notebook", reason="Notebook 7 is not installed (the matrix installs it)")
    if int(notebook.__version__.split(".")[0]) < 7:
        pytest.skip(f"notebook {notebook.__version__} is not Notebook 7")
    return notebook.__version__


def _notebook_server(tmp_path: Path, root: Path):
    """``jupyter notebook`` (Notebook 7) serving ``root``; stopped by PID after."""
    return jupyter_frontend(tmp_path, root, "notebook")


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
