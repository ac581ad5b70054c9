"""Cancel: seconds from the click to REVOKED for a running task that never checks for a cancel.

For each pool (in-kernel threads, in-kernel solo, a prefork ``celery worker`` process), a task
looping in Python and one sleeping in 0.5 s steps are started, seen running, then cancelled with
``celerynb.cancel`` (what the Cancel button calls); the time until the backend holds REVOKED is
recorded, the median of several runs. The issue's target: within 2 s on every pool. Figures:
``cancel_<pool>_<loop|steps>_s``.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _click_to_revoked(task, args: tuple) -> float:
    import celerynb

    result = task.apply_async(args)
    deadline = time.monotonic() + 60
    while result.state == "PENDING":  # running: our task class stores STARTED after 0.2 s
        if time.monotonic() > deadline:
            raise TimeoutError("task never started")
        time.sleep(0.005)
    start = time.perf_counter()
    celerynb.cancel(result)
    while result.state != "REVOKED":
        if time.perf_counter() - start > 60:
            raise TimeoutError(f"not stopped: {result.state}")
        time.sleep(0.005)
    return time.perf_counter() - start


def _measure(repeats: int) -> dict[str, float]:
    from _bench_tasks import spin, steps

    figures = {}
    for label, task, args in (("loop", spin, ()), ("steps", steps, (0.5,))):
        figures[label] = statistics.median(_click_to_revoked(task, args) for _ in range(repeats))
    return figures


def run(quick: bool = False) -> dict[str, float]:
    import celerynb

    logging.getLogger("celery").setLevel(logging.ERROR)
    repeats = 3 if quick else 7
    figures: dict[str, float] = {}
    for pool in ("threads", "solo"):
        with celerynb.LocalCluster(pool=pool):
            for label, value in _measure(repeats).items():
                figures[f"cancel_{pool}_{label}_s"] = value
    with celerynb.LocalCluster(workers=0) as cluster:
        cluster.add_process(concurrency=1, extra_args=["--include", "_bench_tasks"], env={"PYTHONPATH": str(HERE)})
        for label, value in _measure(repeats).items():
            figures[f"cancel_prefork_{label}_s"] = value
    return {k: round(v, 3) for k, v in figures.items()}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
