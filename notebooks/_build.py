"""Write the tutorial notebooks, and optionally execute them to store their outputs.

    python notebooks/_build.py              # write the .ipynb files (no outputs)
    python notebooks/_build.py --execute    # write, then run each one in a real kernel

Executing uses the same environment as the nbval run (a private CELERYNB_RUNTIME_DIR,
CELERYNB_NONINTERACTIVE=1), so that stored outputs are what ``pytest --nbval`` compares.
The notebooks are the source of truth once committed; this script is how they were made.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _content import NOTEBOOKS  # noqa: E402


def build(name: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook()
    for text in cells:
        text = text.strip("\n")
        if text.startswith("md:"):
            nb.cells.append(new_markdown_cell(text[3:].strip("\n")))
        else:
            nb.cells.append(new_code_cell(text))
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:  # keep diffs small: ids are regenerated, metadata stays empty
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def _kill_survivors(runtime: str) -> None:
    """Kill what a failed notebook left running (found by its runtime directory)."""
    import signal
    import time

    time.sleep(1)
    marker = f"CELERYNB_RUNTIME_DIR={runtime}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                print("killed a leftover process", entry.name)
        except (OSError, ValueError):
            continue


def main(argv: list[str]) -> int:
    only = [a for a in argv if not a.startswith("--")]
    for name, cells in NOTEBOOKS.items():
        if only and not any(o in name for o in only):
            continue
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(name, cells), path)
        print("wrote", path.name)
        if "--execute" in argv:
            with tempfile.TemporaryDirectory(prefix="celerynb-nb-") as runtime:
                os.environ["CELERYNB_RUNTIME_DIR"] = runtime
                os.environ["CELERYNB_NONINTERACTIVE"] = "1"
                try:
                    execute(path)
                finally:
                    _kill_survivors(runtime)
            print("executed", path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
