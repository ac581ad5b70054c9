"""Re-execute tutorial notebooks so that their stored outputs are what ``pytest --nbval`` compares.

    python notebooks/_execute.py 05_handling_results.ipynb     # or 05, or notebooks/05_handling_results.md
    python notebooks/_execute.py 01 09 11 12                   # several, one kernel each
    python notebooks/_execute.py --all                         # all of them (a few minutes)

For each notebook:

1. ``jupytext --sync`` the pair first, so that an edit made in ``NN_name.md`` (or in the
   ``.ipynb``) is what runs: the more recently modified file of the pair gives the inputs;
2. run it top to bottom in a fresh ``python3`` kernel whose working directory is
   ``notebooks/`` (as under JupyterLab and nbval), in the environment of the nbval run
   (``notebooks/conftest.py``): a private ``CELERYNB_RUNTIME_DIR`` and
   ``CELERYNB_NONINTERACTIVE=1``;
3. drop each cell's ``metadata.execution`` (timings that would make every run a diff), write
   the ``.ipynb`` and sync the ``.md`` from it;
4. kill whatever the notebook left running (found by its runtime directory), as the nbval run
   does.

A cell that raises stops that notebook: its stored outputs stay as they were, and the script
exits with status 1. Review the new outputs with ``git diff notebooks/``, then run
``pytest --nbval notebooks/NN_name.ipynb``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 180  # seconds per cell


def _resolve(arg: str) -> Path:
    """``05``, ``05_handling_results``, ``...ipynb`` or ``...md`` (any directory): the .ipynb in notebooks/."""
    name = Path(arg).name
    stem = name.rsplit(".", 1)[0] if name.endswith((".ipynb", ".md")) else name
    matches = sorted(p for p in HERE.glob("[0-9][0-9]_*.ipynb") if p.stem == stem or p.stem.startswith(f"{stem}_"))
    if len(matches) != 1:
        raise SystemExit(f"{arg!r} names {len(matches)} tutorial notebooks in {HERE}: {[p.name for p in matches]}")
    return matches[0]


def _sync(path: Path) -> None:
    from jupytext.cli import jupytext

    jupytext(["--sync", "--quiet", str(path)])


def _execute(path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
    client.execute()
    for cell in nb.cells:  # keep diffs small: no per-run timings in the stored notebook
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def _kill_survivors(runtime: str) -> list[int]:
    """Kill the processes (other than this one) whose environment names our runtime directory."""
    time.sleep(1)  # the kernel takes a moment to exit after its last cell
    marker = f"CELERYNB_RUNTIME_DIR={runtime}".encode()
    killed = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return killed


def run(path: Path) -> bool:
    """Sync, execute and re-sync one notebook; False if a cell failed (its outputs are then left as they were)."""
    _sync(path)
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="celerynb-nb-") as runtime:
        os.environ["CELERYNB_RUNTIME_DIR"] = runtime
        os.environ["CELERYNB_NONINTERACTIVE"] = "1"
        try:
            _execute(path)
        except Exception as exc:  # CellExecutionError names the cell and shows its traceback
            print(f"FAILED {path.name}:\n{exc}", file=sys.stderr)
            return False
        finally:
            os.environ.clear()
            os.environ.update(saved)
            for pid in _kill_survivors(runtime):
                print(f"killed a process {path.name} left running: pid {pid}", file=sys.stderr)
    _sync(path)
    print("executed", path.name)
    return True


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb")) if argv == ["--all"] else [_resolve(a) for a in argv]
    failed = [p.name for p in paths if not run(p)]
    if failed:
        print("failed:", " ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
