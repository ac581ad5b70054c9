"""Scaling: how the per-task cost of submitting, sweeping and awaiting grows with the task count.

Flat per task is the goal. Each size runs in its own interpreter (so peak memory is that of a
kernel tracking that many tasks, nothing else) against one private embedded server, with no
worker: results are written straight into the backend, as a worker's would be.

Per size N (1k, 10k, 50k; ``--quick``: 1k, 5k), figures named ``<figure>_<N>``:

- ``submit_us_per_task_map`` / ``submit_us_per_task_delay``: ``celerynb.map`` of N trivial
  tasks / a Python loop of ``.delay()``, same app, same process; ``bulk_speedup`` is their ratio.
- ``await_us_per_task``: ``celerynb.gather`` of the N mapped tasks, all finished, by a
  fresh monitor that has seen none of them (track + subscribe + read + decode + resolve).
- ``sweep_us_per_task``: one reconcile sweep of the monitor over the N tasks, steady state (as in
  ``bench_monitor``: payloads read and compared, only changes decoded); ``sweep_cold_us_per_task``:
  the first sweep, every payload decoded.
- ``peak_rss_mb_tracking`` (largest size only): peak resident memory of the process with the N
  tasks submitted, tracked and collected; ``rss_growth_mb_tracking``: the same above the
  process's memory before submitting.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

HERE = Path(__file__).resolve().parent
_URL_ENV = "CELERYNB_BENCH_SCALING_URL"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _finish(app, ids: list[str]) -> None:
    """Write a SUCCESS result for every id (SET + PUBLISH, as the Redis backend does), pipelined."""
    from datetime import datetime

    backend = app.backend
    done = datetime.now(UTC).isoformat()
    client = backend.client
    for start in range(0, len(ids), 1000):
        with client.pipeline(transaction=False) as pipe:
            for i, tid in enumerate(ids[start:start + 1000], start):
                key = backend.get_key_for_task(tid)
                payload = backend.encode({"status": "SUCCESS", "result": i, "traceback": None, "children": [],
                                          "date_done": done, "task_id": tid})
                pipe.set(key, payload)
                pipe.publish(key, payload)
            pipe.execute()


def _one_size(n: int) -> dict[str, float]:
    """Runs in a child interpreter: every figure for ``n`` tasks."""
    import asyncio

    from celery import Celery

    from celerynb.bulk import map as bulk_map
    from celerynb.tracking import awaiting as results
    from celerynb.tracking.backend_source import BackendSource
    from celerynb.tracking.monitor import forget_monitors, get_monitor

    url = os.environ[_URL_ENV]
    app = Celery("bench-scaling", broker=url, backend=url)
    app.config_from_object("celerynb.workers.settings")
    app.conf.broker_url = app.conf.result_backend = url

    @app.task(name="bench.scaling.square")
    def square(x):
        return x * x

    square.delay(0)  # warm: connection, queue declaration, result consumer
    bulk_map(square, range(10))
    _purge(app)
    base_rss = _rss_mb()

    start = time.perf_counter()
    group = bulk_map(square, range(n))
    submit_map = time.perf_counter() - start
    ids = [r.id for r in group.results]
    _finish(app, ids)
    forget_monitors()  # the map's monitor may have seen some finish: gather starts from nothing

    start = time.perf_counter()
    values = asyncio.run(results.gather(group, app=app, timeout=600))
    await_s = time.perf_counter() - start
    assert values == list(range(n)), "every result collected, in order"

    monitor = get_monitor(app)
    source = BackendSource.open(app)
    cold, steady = [], []
    for _ in range(3):
        with monitor._lock:
            monitor._payloads.clear()  # as if never read: every payload decoded again
        start = time.perf_counter()
        monitor._read(source, ids)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        monitor._read(source, ids)  # steady state: payloads compared, only changes decoded
        steady.append(time.perf_counter() - start)
    source.close()
    peak, growth = _peak_rss_mb(), _rss_mb() - base_rss
    monitor.stop()
    _purge(app)

    del group, values
    start = time.perf_counter()
    sent = [square.delay(x) for x in range(n)]
    submit_delay = time.perf_counter() - start
    assert len(sent) == n
    _purge(app)
    app.backend.client.flushdb()
    per_us = 1e6 / n
    return {
        "submit_us_per_task_map": submit_map * per_us,
        "submit_us_per_task_delay": submit_delay * per_us,
        "bulk_speedup": submit_delay / submit_map,
        "await_us_per_task": await_s * per_us,
        "sweep_us_per_task": min(steady) * per_us,
        "sweep_cold_us_per_task": min(cold) * per_us,
        "peak_rss_mb_tracking": peak,
        "rss_growth_mb_tracking": growth,
    }


def _purge(app) -> None:
    with app.connection_for_write() as conn:
        for queue in app.amqp.queues.values():
            queue.bind(conn.default_channel).purge()


def _label(n: int) -> str:
    return f"{n // 1000}k"


def run(quick: bool = False) -> dict[str, float]:
    from celerynb.cluster.server import EmbeddedServer

    sizes = [1000, 5000] if quick else [1000, 10_000, 50_000]
    srv = EmbeddedServer().start()
    figures: dict[str, float] = {}
    try:
        env = {**os.environ, _URL_ENV: srv.url}  # the password travels in the environment, not argv
        for n in sizes:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--size", str(n)],
                                  env=env, capture_output=True, text=True, timeout=600, cwd=HERE.parent)
            if done.returncode != 0:
                raise RuntimeError(f"bench_scaling at {n} tasks failed:\n{done.stderr[-2000:]}")
            one = json.loads(done.stdout.strip().splitlines()[-1])
            for name, value in one.items():
                if name.endswith("tracking") and n != sizes[-1]:
                    continue
                figures[f"{name}_{_label(n)}"] = round(value, 3)
    finally:
        srv.stop()
    return figures


if __name__ == "__main__":
    if "--size" in sys.argv:
        print(json.dumps(_one_size(int(sys.argv[sys.argv.index("--size") + 1]))))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
