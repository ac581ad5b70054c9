"""The tutorials' sources: each notebook agrees with its paired MyST file, and ruff passes on them.

Every ``notebooks/NN_name.ipynb`` (cells and stored outputs, what nbval compares) is paired by
jupytext with ``notebooks/NN_name.md`` (the same cells as MyST Markdown, what a reviewer
reads), through ``notebooks/jupytext.toml``. An edit to one that was not synced to the other
fails here; ``jupytext --sync notebooks/NN_name.ipynb`` fixes it (the newer file wins).

ruff checks the cells through nbQA (``nbqa ruff notebooks/*.ipynb``), which also hands it the
bodies of ``%%celery_task`` cells (``[tool.nbqa.process_cells]`` in pyproject.toml); ruff on
its own skips cell-magic cells. These checks need no kernel.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "notebooks"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
# Markdown files of notebooks/ that are not notebooks.
NOT_PAIRED = {"README.md"}
TEXTS = sorted(p for p in HERE.glob("*.md") if p.name not in NOT_PAIRED)


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def test_pairing_is_configured_once_for_the_folder():
    path = find_jupytext_configuration_file(str(HERE))
    assert path is not None and Path(path) == HERE / "jupytext.toml"
    assert load_jupytext_configuration_file(path).formats == ["ipynb,md:myst"]


def test_every_notebook_has_its_text_file_and_no_text_file_is_orphaned():
    assert len(NOTEBOOKS) == 14
    notebooks, texts = {p.stem for p in NOTEBOOKS}, {p.stem for p in TEXTS}
    assert not notebooks - texts, f"notebooks without a .md (run jupytext --sync on them): {sorted(notebooks - texts)}"
    assert not texts - notebooks, (
        f".md files without a notebook (delete them, or jupytext --sync): {sorted(texts - notebooks)}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_its_text_file_have_the_same_cells(path):
    text_path = path.with_suffix(".md")
    if not text_path.exists():
        pytest.fail(f"{text_path.name} is missing")
    nb, text = jupytext.read(path), jupytext.read(text_path)
    assert text.metadata["jupytext"]["text_representation"]["format_name"] == "myst", text_path.name
    for nb_ in (nb, text):  # the pairing comes from jupytext.toml, not from one notebook's metadata
        assert "formats" not in nb_.metadata.get("jupytext", {}), "pair through notebooks/jupytext.toml only"
    a, b = _cells(nb), _cells(text)
    if a == b:
        return
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    x, y = (a[first] if first < len(a) else ("(none)", "")), (b[first] if first < len(b) else ("(none)", ""))
    diff = "\n".join(
        difflib.unified_diff(
            f"[{x[0]}]\n{x[1]}".splitlines(), f"[{y[0]}]\n{y[1]}".splitlines(), path.name, text_path.name, lineterm=""
        )
    )
    pytest.fail(
        f"{path.name} and {text_path.name} differ ({len(a)} vs {len(b)} cells; first difference at cell {first}):\n"
        f"{diff}\nSync them: jupytext --sync notebooks/{path.name} (the more recently modified file wins)."
    )


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_passes_on_every_cell_of_the_tutorials():
    result = _run(
        "nbqa", "ruff", *[str(p.relative_to(ROOT)) for p in NOTEBOOKS], "--no-cache", "--output-format=concise"
    )
    assert result.returncode == 0, f"nbqa ruff notebooks/*.ipynb:\n{result.stdout}{result.stderr}"


def test_ruff_passes_on_the_python_files_next_to_the_notebooks():
    """tutorial_helpers.py (imported by the tutorials), _execute.py, conftest.py and proj/."""
    assert (HERE / "tutorial_helpers.py").is_file()
    result = _run("ruff", "check", "--no-cache", "--output-format=concise", "notebooks/")
    assert result.returncode == 0, f"ruff check notebooks/:\n{result.stdout}{result.stderr}"
    listed = _run("ruff", "check", "--no-cache", "--show-files", "notebooks/").stdout
    assert "tutorial_helpers.py" in listed


def test_the_cell_check_reads_the_body_of_celery_task_cells(tmp_path):
    """With this repository's configuration, a mistake inside a %%celery_task cell is reported."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext celerynb"),
        nbformat.v4.new_code_cell("%%celery_task\ndef double(x):\n    return x * factor"),
    ]
    nbformat.write(nb, tmp_path / "probe.ipynb")
    result = _run("nbqa", "ruff", "probe.ipynb", "--no-cache", "--output-format=concise", cwd=tmp_path)
    assert result.returncode == 1 and "F821" in result.stdout and "factor" in result.stdout, (
        result.stdout + result.stderr
    )


@pytest.mark.slow
def test_saving_a_tutorial_in_jupyter_writes_its_paired_text_file(tmp_path):
    """A notebook edited and saved in JupyterLab (the contents API) updates its ``.md`` too."""
    import json
    import os
    import secrets
    import signal
    import socket
    import time
    import urllib.request

    root = tmp_path / "notebooks"
    root.mkdir()
    source = NOTEBOOKS[0]
    shutil.copy(source, root / source.name)
    shutil.copy(HERE / "jupytext.toml", root / "jupytext.toml")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    base = f"http://127.0.0.1:{port}/api/contents/{source.name}"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(0.2)
        model = json.loads(urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=10).read())
        marker = f"Edited in JupyterLab {secrets.token_hex(4)}."
        model["content"]["cells"][0]["source"] += f"\n\n{marker}"
        body = json.dumps({"type": "notebook", "format": "json", "content": model["content"]}).encode()
        urllib.request.urlopen(urllib.request.Request(base, data=body, headers=headers, method="PUT"), timeout=30).read()
        text = (root / source.with_suffix(".md").name)
        assert text.exists(), "saving did not write the paired .md: is jupytext's server extension installed?"
        assert marker in text.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
