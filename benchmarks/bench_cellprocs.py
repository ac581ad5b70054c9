"""Cell tasks on worker processes against the same function as a module task, same workers.

One ``celery worker`` process with two prefork children serves both. Figures:
``cell_task_throughput_ratio`` (cell / module throughput, target >= 0.95) and
``cell_version_load_ms`` (extra latency of the first call after a redefinition: fetch,
verify, compile on the worker).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def _throughput(task, n: int) -> float:
    start = time.perf_counter()
    results = [task.delay(i) for i in range(n)]
    for r in results:
        r.get(timeout=120)
    return n / (time.perf_counter() - start)


def _rtt(task) -> float:
    start = time.perf_counter()
    task.delay(3).get(timeout=30)
    return time.perf_counter() - start


def run(quick: bool = False) -> dict[str, float]:
    from IPython.core.interactiveshell import InteractiveShell

    import celerynb

    from _bench_tasks import bench_square as module_task

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "celerynb")
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        cluster.add_process(concurrency=2, extra_args=["--include", "_bench_tasks"],
                            env={"PYTHONPATH": str(HERE)})
        shell.run_cell_magic("celery_task", "", "def bench_square(x):\n    return x * x\n")
        cell_task = shell.user_ns["bench_square"]
        n, repeats = (500, 3) if quick else (2000, 5)
        _throughput(cell_task, 50), _throughput(module_task, 50)
        rates = {"cell": [], "module": []}
        for i in range(repeats):
            order = [("cell", cell_task), ("module", module_task)]
            for label, task in order if i % 2 == 0 else list(reversed(order)):
                rates[label].append(_throughput(task, n))
        steady = statistics.median(_rtt(cell_task) for _ in range(30))
        loads = []
        for version in range(5 if quick else 10):
            shell.run_cell_magic("celery_task", "", f"def bench_square(x):\n    return x * x + {version}\n")
            # Both prefork children must load the new version: take the slower of two first calls.
            loads.append(max(_rtt(shell.user_ns["bench_square"]) for _ in range(2)))
        cell, module = statistics.median(rates["cell"]), statistics.median(rates["module"])
        return {
            "cell_task_procs_throughput_per_s": cell,
            "module_task_procs_throughput_per_s": module,
            "cell_task_throughput_ratio": cell / module,
            "cell_task_steady_rtt_ms": steady * 1e3,
            "cell_version_load_ms": max(0.0, (statistics.median(loads) - steady) * 1e3),
        }
    finally:
        cluster.stop()


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv)))
