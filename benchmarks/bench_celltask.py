"""A ``%%celery_task`` task against the same function as a module task, on in-kernel workers.

Figures (ratios cell / module, same cluster, same run, medians over repeats; 1.0 = no overhead):
``cell_task_rtt_ratio`` (sequential round trip) and ``cell_task_inkernel_throughput_ratio``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

CELL = "def bench_square(x):\n    return x * x\n"


def _rtt(task, n: int) -> float:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        task.delay(i).get(timeout=10)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _throughput(task, n: int) -> float:
    start = time.perf_counter()
    results = [task.delay(i) for i in range(n)]
    for r in results:
        r.get(timeout=60)
    return n / (time.perf_counter() - start)


def run(quick: bool = False) -> dict[str, float]:
    from IPython.core.interactiveshell import InteractiveShell

    import celerynb

    from _bench_tasks import bench_square as module_task

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "celerynb")
    shell.run_cell_magic("celery_task", "", CELL)
    cell_task = shell.user_ns["bench_square"]
    cluster = celerynb.start(workers=1, concurrency=4)
    try:
        n_rtt, n_tp, repeats = (100, 300, 3) if quick else (300, 1000, 5)
        _rtt(module_task, 20), _rtt(cell_task, 20)  # warm up both paths
        rtt = {"cell": [], "module": []}
        tp = {"cell": [], "module": []}
        for i in range(repeats):
            order = [("cell", cell_task), ("module", module_task)]
            for label, task in order if i % 2 == 0 else reversed(order):
                rtt[label].append(_rtt(task, n_rtt))
                tp[label].append(_throughput(task, n_tp))
        med = {k: statistics.median(v) for k, v in rtt.items()}
        tput = {k: statistics.median(v) for k, v in tp.items()}
        return {
            "cell_task_rtt_ms": med["cell"] * 1e3,
            "module_task_rtt_ms": med["module"] * 1e3,
            "cell_task_rtt_ratio": med["cell"] / med["module"],
            "cell_task_inkernel_throughput_per_s": tput["cell"],
            "module_task_inkernel_throughput_per_s": tput["module"],
            "cell_task_inkernel_throughput_ratio": tput["cell"] / tput["module"],
        }
    finally:
        cluster.stop()


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv)))
