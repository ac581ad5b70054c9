"""Reattach: seconds to rebuild a saved display of N finished tasks (``%celery reattach``).

N tasks run on the in-kernel worker; a notebook holding one saved progress display of their ids
is written; the figure is the time ``reattach`` takes to read it, fetch every state and show
the display (its final state known). Target (issue 19): 1,000 tasks in under 1 s.
Figures: ``reattach_<N>_s``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def run(quick: bool = False) -> dict[str, float]:
    import nbformat

    import celerynb
    from celerynb.display import saved
    from celerynb.notebook import reattach
    from celerynb.tracking import monitor as monitor_module
    from celerynb.workers.tasks import analyze_content

    figures = {}
    with celerynb.LocalCluster() as cluster:
        for n in (1000,) if quick else (1000, 5000):
            results = celerynb.map(analyze_content, [f"text {i}" for i in range(n)])
            results.get(timeout=300)
            ids = [r.id for r in results.results]
            output = nbformat.v4.new_output("display_data", data={"text/plain": "…"},
                                            metadata=saved.output_metadata("progress", ids, cluster.app, True))
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("", outputs=[output])])
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "saved.ipynb"
                nbformat.write(nb, path)
                monitor_module.forget_monitors()  # as a new kernel: nothing known of these tasks
                start = time.perf_counter()
                (display,) = reattach.reattach(path, cluster.app)
                display.wait(timeout=60)
                figures[f"reattach_{n}_s"] = time.perf_counter() - start
                assert display.finished and "SUCCESS" in display.text()
                display.close()
    return {k: round(v, 3) for k, v in figures.items()}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
