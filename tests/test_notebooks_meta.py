"""The tutorial notebooks as files: order, first cell, stored outputs, no secrets, guide coverage.

nbval runs them (``pytest --nbval notebooks/``); these checks are fast and need no kernel.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The guide the tutorials follow ("Distributed Task Processing with Celery"), kept in the repo.
GUIDE = ROOT / "docs" / "guide.md"

# A URL with a password that is not masked (`redis://:***@` is fine).
_UNMASKED = re.compile(r"[a-z0-9+]+://[^\s:/@]*:(?!\*\*\*@)[^\s@/]+@", re.I)
# Supervisord settings the tutorial adapts to this machine (paths, user, start time).
_MACHINE_KEYS = {"command", "directory", "user", "stdout_logfile", "stderr_logfile", "startsecs"}


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _output_texts(cell) -> list[str]:
    texts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            texts.append(out["text"])
        for value in out.get("data", {}).values():
            texts.append(value if isinstance(value, str) else str(value))
        texts += [out.get("evalue", "")] + list(out.get("traceback", []))
    return texts


def test_notebooks_are_numbered_in_order():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert len(NOTEBOOKS) == 14  # 13 sections of the guide, then your own project
    assert numbers == list(range(1, len(NOTEBOOKS) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_starts_with_the_extension_and_has_prose_first(path):
    nb = _read(path)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert _code_cells(nb)[0].source.strip() == "%load_ext celerynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_was_executed_in_order_with_stored_outputs(path):
    cells = _code_cells(_read(path))
    counts = [c.execution_count for c in cells]
    assert None not in counts, "every code cell must have been run (nbval compares stored outputs)"
    assert counts == list(range(1, len(cells) + 1)), "run top to bottom in one kernel"
    assert sum(bool(c.outputs) for c in cells) >= len(cells) // 2, "most cells should show what they did"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_carry_no_execution_timings(path):
    """``notebooks/_execute.py`` drops them, so that a re-run changes only what the cells print."""
    timed = [c.source[:80] for c in _read(path).cells if "execution" in c.metadata]
    assert not timed, f"re-execute with notebooks/_execute.py (cells with metadata.execution: {timed})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_output_is_an_error_or_leaks_a_password(path):
    for cell in _code_cells(_read(path)):
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:200]
        for text in _output_texts(cell):
            assert not _UNMASKED.search(text), f"unmasked URL password in the output of: {cell.source[:120]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_ignores_few_outputs_and_stops_what_it_started(path):
    cells = _code_cells(_read(path))
    ignored = [c for c in cells if "NBVAL_IGNORE_OUTPUT" in c.source or "NBVAL_SKIP" in c.source]
    assert len(ignored) <= 3, "mark only genuinely non-deterministic cells"
    assert not any("NBVAL_SKIP" in c.source for c in cells), "every cell must run under nbval"
    last = cells[-1].source
    assert re.search(r"\.stop\(\)|celerynb down", last), "the last cell must stop the cluster/processes"


def test_readme_lists_every_notebook_in_order():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    positions = [readme.find(p.name) for p in NOTEBOOKS]
    assert -1 not in positions, [p.name for p, pos in zip(NOTEBOOKS, positions, strict=True) if pos == -1]
    assert positions == sorted(positions)


def _guide_blocks() -> list[tuple[str, str]]:
    # Part of the repo: missing is a failure, not a skip.
    text = GUIDE.read_text().replace("utils.", "celerynb.").replace("utils/", "celerynb/")
    return re.findall(r"```(\w+)\n(.*?)```", text, re.S)


def test_every_code_example_of_the_guide_appears_in_a_notebook():
    sources = "\n".join(c.source for p in NOTEBOOKS for c in _read(p).cells)
    lines = {line.strip() for line in sources.splitlines()}
    text = " ".join(sources.split())
    missing = []
    for lang, block in _guide_blocks():
        for raw in block.splitlines():
            line = raw.strip()
            if not line or (lang == "python" and line.startswith("#")):
                continue
            if lang == "ini" and "=" in line and line.split("=")[0] in _MACHINE_KEYS:
                if f"{line.split('=')[0]}=" not in sources:
                    missing.append(line)
                continue
            if lang == "bash" and line.startswith("#"):
                continue
            if line not in lines and " ".join(line.split()) not in text:
                missing.append(line)
    assert not missing, "guide lines not found in any notebook:\n" + "\n".join(missing)
