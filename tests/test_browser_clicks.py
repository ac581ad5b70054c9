"""Clicks while a cell runs, in a real JupyterLab (4.6, comms over subshells on by default) with
ipykernel 7.4: a Cancel click during ``progress(wait=True)`` acts at once (handled on the subshell
it came on); the stop button in a blocking wait returns at once with the one-line message; a
Cancel click during an awaiting cell acts at once; ``retry_failed`` sends the cancelled task again
and its display, static once it had ended, comes back to life on "attempt 2"."""

from __future__ import annotations

import re

import nbformat
import pytest
from test_browser import _jupyterlab, _open, browser  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import celerynb\nfrom celerynb.workers.tasks import long_process\ncluster = celerynb.start()\nprint('started')",
    "r = long_process.delay(list(range(300)), 0.1)\ncelerynb.progress(r, wait=True)",
    "r1 = long_process.delay(list(range(300)), 0.1)\ncelerynb.progress(r1, wait=True)",
    "r2 = long_process.delay(list(range(300)), 0.1)\nd2 = celerynb.progress(r2)\n"
    "print('awaited:', repr(await celerynb.wait(r2, propagate=False)))",
    "again = celerynb.retry_failed(r)",
    "print('first:', r.state)",
]


def test_cancel_clicks_while_cells_block_or_await(browser, tmp_path):  # noqa: F811
    from importlib.metadata import version

    from playwright.sync_api import expect

    lab = tuple(int(x) for x in version("jupyterlab").split(".")[:2])
    if lab < (4, 4):  # README: a click then waits for the blocking cell (found by the version matrix)
        pytest.skip(f"JupyterLab {version('jupyterlab')} sends no widget messages on a kernel subshell (4.4+ does)")

    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, root / "clicks.ipynb")
    with _jupyterlab(tmp_path / "run", root) as (base, token):
        page = _open(browser, base, token, "clicks.ipynb")
        cells = page.locator(".jp-Notebook .jp-Cell")

        def run(index: int) -> None:
            cells.nth(index).locator(".jp-InputPrompt").click()
            page.keyboard.press("Shift+Enter")

        def running_bar(index: int):
            bar = cells.nth(index).locator(".celerynb-progress .widget-hprogress .progress .progress-bar").first
            expect(bar).to_have_attribute("style", re.compile(r"width:\s*[1-9]"), timeout=90_000)
            return bar

        run(0)
        expect(cells.nth(0).locator(".jp-OutputArea")).to_contain_text("started", timeout=90_000)
        # 1. A blocking cell: the click comes on a subshell and acts at once; the cell returns.
        run(1)
        running_bar(1)
        cells.nth(1).locator(".celerynb-progress .widget-button", has_text="Cancel").first.click()
        expect(cells.nth(1).locator(".jp-OutputArea")).to_contain_text("REVOKED", timeout=10_000)

        # 2. The stop button in a blocking wait: at once, saying the task keeps running.
        run(2)
        running_bar(2)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:interrupt-kernel'); }")
        expect(cells.nth(2).locator(".jp-OutputArea").first).to_contain_text(
            "1 task keeps running; cancel them with celerynb.cancel(results) or the Cancel button", timeout=15_000)

        # 3. An awaiting cell: the click acts at once.
        run(3)
        running_bar(3)
        cells.nth(3).locator(".celerynb-progress .widget-button", has_text="Cancel").first.click()
        expect(cells.nth(3).locator(".jp-OutputArea").first).to_contain_text("awaited: TaskRevokedError", timeout=10_000)

        # 4. Retry failed: the first display is live again and its row follows attempt 2.
        run(4)
        expect(cells.nth(1).locator(".jp-OutputArea")).to_contain_text("attempt 2", timeout=20_000)
        page.screenshot(path=str(tmp_path / "clicks.png"), full_page=True)
        run(5)
        expect(cells.nth(5).locator(".jp-OutputArea").first).to_contain_text("first: REVOKED", timeout=20_000)
