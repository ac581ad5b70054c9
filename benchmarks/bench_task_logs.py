"""What capturing each task's output (``celerynb.logs``) costs, measured on and off in one run.

In-kernel threads cluster on a private embedded server, tasks that print nothing (the common
case: no Redis write at all), in alternating rounds with capture switched on and off
(``celerynb.workers.capture.mode``), medians over rounds. Figures:

``task_logs_small_on_vs_off``
    tasks/s of 300 ``.delay()`` + ``gather`` of a trivial task, capture on / capture off.
    Target: >= 0.95 (no noticeable cost).
``task_logs_map_on_vs_off``
    the same for ``celerynb.map`` of 5,000 trivial items (``batch="auto"``: items captured one
    by one inside batch messages).
``task_logs_processes_map_on_vs_off``
    the same map on one ``celery worker`` process (prefork, 2 children: fd-level capture),
    started with and without ``CELERYNB_CAPTURE_LOGS=0``, alternating.
``task_logs_enter_exit_threads_us`` / ``task_logs_enter_exit_fd_us``
    one capture's enter + exit around a task that writes nothing, per-thread and fd-level
    (four ``dup2`` and an ``fstat``), in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import types


def _per_call_us(kind: str, n: int) -> float:
    from celerynb.workers import capture, task_logs
    from celerynb.workers.celery_app import app

    saved = capture.mode
    capture.install(kind)
    task = app.tasks["tasks.analyze_content"]
    request = types.SimpleNamespace(id="bench", called_directly=False, is_eager=False)
    original = task_logs.supported
    task_logs.supported = lambda backend: True  # no backend is touched: nothing is written
    try:
        start = time.perf_counter()
        for _ in range(n):
            with capture.capturing(task, request):
                pass
        return (time.perf_counter() - start) / n * 1e6
    finally:
        task_logs.supported = original
        capture.uninstall()
        if saved:
            capture.install(saved)


def run(quick: bool) -> dict[str, float]:
    import celerynb
    from celerynb.workers import capture
    from celerynb.workers.celery_app import app

    rounds = 3 if quick else 7
    figures: dict[str, float] = {}
    figures["task_logs_enter_exit_threads_us"] = round(_per_call_us("threads", 20000), 2)
    figures["task_logs_enter_exit_fd_us"] = round(_per_call_us("fd", 20000), 2)
    name = "bench.logs_noop"

    @app.task(name=name, shared=False)
    def noop(x: int = 0) -> int:
        return x

    rates: dict[str, list[float]] = {"small_on": [], "small_off": [], "map_on": [], "map_off": []}
    with celerynb.LocalCluster(app, concurrency=4):
        for r in range(rounds * 2):
            on = r % 2 == 0
            capture.mode = "threads" if on else None
            key = "on" if on else "off"
            start = time.perf_counter()
            results = [noop.delay(i) for i in range(300)]
            asyncio.run(celerynb.gather(*results))
            rates[f"small_{key}"].append(300 / (time.perf_counter() - start))
            start = time.perf_counter()
            group = celerynb.map(noop, range(5000), batch="auto")
            asyncio.run(celerynb.gather(group))
            rates[f"map_{key}"].append(5000 / (time.perf_counter() - start))
    capture.mode = None
    rates["processes_map_on"], rates["processes_map_off"] = [], []
    for r in range(rounds * 2):
        on = r % 2 == 0
        with celerynb.LocalCluster(app, workers=0) as cluster:
            cluster.add_process(concurrency=2, env={} if on else {capture.ENV_SWITCH: "0"})
            task = app.tasks["tasks.analyze_content"]  # known to worker processes (celerynb's own task)
            asyncio.run(celerynb.gather(celerynb.map(task, ["warm up"] * 200, batch="auto")))
            start = time.perf_counter()
            asyncio.run(celerynb.gather(celerynb.map(task, ["a b c"] * 5000, batch="auto")))
            rates[f"processes_map_{'on' if on else 'off'}"].append(5000 / (time.perf_counter() - start))
    for kind in ("small", "map", "processes_map"):
        on, off = statistics.median(rates[f"{kind}_on"]), statistics.median(rates[f"{kind}_off"])
        figures[f"task_logs_{kind}_on_per_s"], figures[f"task_logs_{kind}_off_per_s"] = round(on), round(off)
        figures[f"task_logs_{kind}_on_vs_off"] = round(on / off, 3)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv)))
