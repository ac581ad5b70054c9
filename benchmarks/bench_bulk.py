"""Bulk submission: ``celerynb.map`` against a Python loop of ``.delay()``, same app, same run.

Both submit the same trivial task to the same embedded server with no worker consuming yet
(submit cost alone); repeats alternate the order; queues are purged between repeats. Then a
worker starts and every result of one final ``celerynb.map`` is collected and checked.

Figures: ``bulk_submit_speedup`` (loop time / map time, median; target >= 5),
(the previous repeat's results are freed before each timing starts: their ``__del__`` is no
submit cost),
``delay_loop_per_s``, ``bulk_map_per_s``, ``bulk_results_collected``, ``bulk_results_lost``
(target 0), ``bulk_collect_s``.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def _purge(app) -> None:
    """Drop the repeat's messages, and the monitor that followed them (its sweeps would
    otherwise compete with the next timed repeat for the GIL)."""
    from celerynb.tracking.monitor import forget_monitors

    with app.connection_for_write() as conn:
        for queue in app.amqp.queues.values():
            queue.bind(conn.default_channel).purge()
    forget_monitors()


def run(quick: bool = False) -> dict[str, float]:
    import celerynb
    from celerynb.bulk import map as bulk_map
    from celerynb.tracking.monitor import get_monitor

    from _bench_tasks import bench_square

    n, repeats = (2000, 3) if quick else (10_000, 3)
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        app = cluster.app
        bench_square.delay(0)  # warm: connection, queue declaration, result consumer
        bulk_map(bench_square, range(10))
        _purge(app)
        loop_s, map_s = [], []
        for i in range(repeats):
            order = ["loop", "map"] if i % 2 == 0 else ["map", "loop"]
            for label in order:
                sent = None  # the previous run's results are freed outside the timed window
                gc.collect()
                start = time.perf_counter()
                if label == "loop":
                    sent = [bench_square.delay(x) for x in range(n)]
                else:
                    sent = bulk_map(bench_square, range(n)).results
                elapsed = time.perf_counter() - start
                assert len(sent) == n
                (loop_s if label == "loop" else map_s).append(elapsed)
            _purge(app)
        # Every result of one bulk submission, through a real worker.
        group = bulk_map(bench_square, range(n))
        start = time.perf_counter()
        cluster.add_worker(concurrency=4)
        snaps = get_monitor(app).wait([r.id for r in group.results], timeout=600)
        collect = time.perf_counter() - start
        ok = sum(1 for i, r in enumerate(group.results) if snaps[r.id].state == "SUCCESS" and snaps[r.id].info == i * i)
        loop, bulk = statistics.median(loop_s), statistics.median(map_s)
        return {
            "bulk_submit_speedup": loop / bulk,
            "delay_loop_per_s": n / loop,
            "bulk_map_per_s": n / bulk,
            "bulk_results_collected": float(ok),
            "bulk_results_lost": float(n - ok),
            "bulk_collect_s": collect,
        }
    finally:
        cluster.stop()


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv)))
