"""Sphinx configuration of the documentation site: ``nox -s docs`` (or ``sphinx-build -W docs docs/_build/html``).

The tutorials are rendered from the notebooks in ``notebooks/`` with the outputs stored in them
(MyST-NB, never re-executed here): they are copied into ``docs/tutorials/`` (not tracked) when
the build starts, with ``notebooks/README.md`` as their index. The user guide pages include the
README's sections, so the README stays the one source of the text.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

from celerynb import __version__  # noqa: E402

project = "celerynb"
author = "celerynb developers"
copyright = "celerynb developers"  # noqa: A001 - Sphinx's name
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Notebooks: render what is stored in them, never run them at build time.
nb_execution_mode = "off"
nb_output_stderr = "show"
# A stored output may hold text/html and text/plain: the HTML (celerynb's static summaries) wins.
nb_mime_priority_overrides = [("html", "text/html", 0), ("html", "text/plain", 10)]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"celerynb {release}"
html_static_path: list[str] = []


def _copy_tutorials() -> None:
    """``notebooks/NN_*.ipynb`` and their index into ``docs/tutorials/`` (rebuilt each time)."""
    out = DOCS / "tutorials"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    names = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(nb, out / nb.name)
        names.append(nb.stem)
    index = (ROOT / "notebooks" / "README.md").read_text()
    toctree = "\n".join(["", "```{toctree}", ":hidden:", "", *names, "```", ""])
    (out / "index.md").write_text(index + toctree)


_copy_tutorials()
