"""Write and execute tests/user_notebooks/word_count.ipynb (stored outputs are nbval's reference).

    .venv/bin/python tests/user_notebooks/_make.py tests/user_notebooks/word_count.ipynb

Run with CELERYNB_NONINTERACTIVE=1 (set below), as CI compares text-only outputs.
"""

import os
import sys
import tempfile

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    "md:# Word counts on a local Celery cluster\n\nA small notebook of the kind users run in CI with nbval, nbmake, papermill or `jupyter nbconvert --execute`.",
    "words = 3  # papermill parameters",
    "%load_ext celerynb",
    "%%celery_task\ndef count_words(texts):\n    import celerynb\n\n    total = 0\n    for text in celerynb.track(texts):\n        total += len(text.split())\n    return total",
    "import celerynb\n\ntexts = [\" \".join([\"word\"] * words)] * 4\nresult = count_words.delay(texts)  # noqa: F821 - defined by %%celery_task\nprint(\"task id:\", result.id)",
    "# NBVAL_IGNORE_OUTPUT\n# a live display: what it shows first depends on when it is drawn\nboard = celerynb.progress(result)",
    "board.wait(timeout=120)",
    "print(board)  # the final state, as deterministic text",
    "print(\"total words:\", result.get(timeout=60))",
    "%celery status",
    "%celery stop",
]
nb = new_notebook()
for text in cells:
    nb.cells.append(new_markdown_cell(text[3:]) if text.startswith("md:") else new_code_cell(text))
nb.cells[1].metadata["tags"] = ["parameters"]
nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
nb.metadata["language_info"] = {"name": "python"}
path = sys.argv[1]
with tempfile.TemporaryDirectory() as rt:
    os.environ["CELERYNB_RUNTIME_DIR"] = rt
    os.environ["CELERYNB_NONINTERACTIVE"] = "1"
    NotebookClient(nb, timeout=180, kernel_name="python3").execute()
for c in nb.cells:
    c.metadata.pop("execution", None)
nbformat.write(nb, path)
