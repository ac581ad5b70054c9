"""Clicks while a cell runs, in a real JupyterLab (4.6, comms over subshells on by default) with
ipykernel 7.4: a Cancel click during ``progress(wait=True)`` waits for the cell (the kernel routes
it back to the main shell) and the stop button returns at once with the one-line message; a Cancel
click during an awaiting cell acts at once; ``retry_failed`` sends the cancelled task again and its
display, static once it had ended, comes back to life on "attempt 2"."""

from __future__ import annotations

import re

import nbformat
import pytest
from test_browser import _jupyterlab, _open, browser  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import celerynb\nfrom celerynb.workers.tasks import long_process\ncluster = celerynb.start()",
    "r = long_process.delay(list(range(300)), 0.1)\ncelerynb.progress(r, wait=True)",
    "r2 = long_process.delay(list(range(300)), 0.1)\nd2 = celerynb.progress(r2)\n"
    "print('awaited:', repr(await celerynb.wait(r2, propagate=False)))",
    "again = celerynb.retry_failed(r)",
    "print('first:', r.state)",
]


def _width(bar) -> float:
    found = re.search(r"width:\s*([\d.]+)%", bar.get_attribute("style") or "")
    return float(found.group(1)) if found else 0.0


def test_cancel_clicks_while_cells_block_or_await(browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, root / "clicks.ipynb")
    with _jupyterlab(tmp_path / "run", root) as (base, token):
        page = _open(browser, base, token, "clicks.ipynb")
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        cells = page.locator(".jp-Notebook .jp-Cell")
        first = cells.nth(1).locator(".celerynb-progress")
        bar = first.locator(".widget-hprogress .progress .progress-bar").first
        expect(bar).to_have_attribute("style", re.compile(r"width:\s*[1-9]"), timeout=90_000)

        # 1. A blocking cell: the click is queued behind it; the task goes on.
        first.locator(".widget-button", has_text="Cancel").first.click()
        at_click = _width(bar)
        page.wait_for_function(
            "([el, w]) => parseFloat((el.style.width || '0').replace('%', '')) >= w + 5",
            arg=[bar.element_handle(), at_click], timeout=30_000)
        # The stop button: the cell ends at once, saying the task keeps running.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:interrupt-kernel'); }")
        expect(cells.nth(1).locator(".jp-OutputArea").first).to_contain_text(
            "1 task keeps running; cancel them with celerynb.cancel(results) or the Cancel button", timeout=15_000)
        # Then the queued click runs: the task is cancelled (the display ends static: a saved
        # notebook shows it, no widget that would read "model not found").
        expect(cells.nth(1).locator(".jp-OutputArea")).to_contain_text("REVOKED", timeout=20_000)

        # 2. An awaiting cell: the click acts at once.
        cells.nth(2).locator(".jp-InputPrompt").click()
        page.keyboard.press("Shift+Enter")
        second = cells.nth(2).locator(".celerynb-progress")
        second_bar = second.locator(".widget-hprogress .progress .progress-bar").first
        expect(second_bar).to_have_attribute("style", re.compile(r"width:\s*[1-9]"), timeout=30_000)
        second.locator(".widget-button", has_text="Cancel").first.click()
        expect(cells.nth(2).locator(".jp-OutputArea").first).to_contain_text(
            "awaited: TaskRevokedError", timeout=5_000)

        # 3. Retry failed: the first display is live again and its row follows attempt 2.
        cells.nth(3).locator(".jp-InputPrompt").click()
        page.keyboard.press("Shift+Enter")
        expect(cells.nth(1).locator(".jp-OutputArea")).to_contain_text("attempt 2", timeout=20_000)
        page.screenshot(path=str(tmp_path / "clicks.png"), full_page=True)
        cells.nth(4).locator(".jp-InputPrompt").click()
        page.keyboard.press("Shift+Enter")
        expect(cells.nth(4).locator(".jp-OutputArea").first).to_contain_text("first: REVOKED", timeout=20_000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:interrupt-kernel'); }")
