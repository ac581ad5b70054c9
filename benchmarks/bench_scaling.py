"""Scaling: how the per-task cost of submitting, sweeping and awaiting grows with the task count.

Flat per task is the goal. Each size runs in its own interpreter (so peak memory is that of a
kernel tracking that many tasks, nothing else) against one private embedded server, with no
worker: results are written straight into the backend, as a worker's would be.

Per size N (1k, 10k, 50k, 100k; ``--quick``: 1k, 5k), figures named ``<figure>_<N>``:

- ``submit_us_per_task_map`` / ``submit_us_per_task_delay``: ``celerynb.map`` of N trivial
  tasks / a Python loop of ``.delay()``, same app, same process; ``bulk_speedup`` is their ratio.
  Not at 100k (the loop alone would take minutes): that size is for memory.
- ``await_us_per_task``: ``celerynb.gather`` of the N mapped tasks, all finished, by a
  fresh monitor that has seen none of them (track + subscribe + read + decode + resolve).
- ``sweep_us_per_task``: one reconcile sweep of the monitor over the N tasks, steady state (as in
  ``bench_monitor``: payloads read and compared, only changes decoded); ``sweep_cold_us_per_task``:
  the first sweep, every payload decoded.
- ``peak_rss_mb_tracking`` (the two largest sizes): peak resident memory of the process with
  the N tasks submitted, tracked and collected; ``rss_growth_mb_tracking``: the same above the
  process's memory before submitting (target at 100k: < 150 MB);
  ``rss_retained_mb_after_forget``: what is still resident above that baseline once the results
  and values are deleted, the monitors forgotten (``forget_monitors``) and ``gc.collect()`` ran.

And one figure of its own interpreter, through the default in-kernel cluster
(``celerynb.LocalCluster()``, its own embedded server):

- ``rss_retained_mb_after_del_100mb_result``: a task returns a 100 MiB string; ``.get()`` it,
  ``del`` the value and the result object, ``gc.collect()``: resident memory still held above
  the process's memory before the task (target: near 0; 100 = the value is kept somewhere);
  ``rss_peak_growth_mb_100mb_result``: the peak while it was held;
  ``rss_retained_mb_after_del_100mb_result_trimmed``: the same after glibc's ``malloc_trim(0)``
  (what is left then is referenced, not merely cached by the allocator).
"""

from __future__ import annotations

import gc
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
_DELAY_LOOP_MAX = 50_000  # the .delay() loop baseline stops here (100k of them: minutes)


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
    cold, steady = _sweeps(app, monitor, ids)
    peak, growth = _peak_rss_mb(), _rss_mb() - base_rss
    monitor.stop()
    _purge(app)

    del group, values, monitor, ids
    forget_monitors()
    gc.collect()
    retained = _rss_mb() - base_rss
    per_us = 1e6 / n
    figures = {
        "submit_us_per_task_map": submit_map * per_us,
        "await_us_per_task": await_s * per_us,
        "sweep_us_per_task": min(steady) * per_us if steady else float("nan"),
        "sweep_cold_us_per_task": min(cold) * per_us if cold else float("nan"),
        "peak_rss_mb_tracking": peak,
        "rss_growth_mb_tracking": growth,
        "rss_retained_mb_after_forget": retained,
    }
    if n <= _DELAY_LOOP_MAX:
        start = time.perf_counter()
        sent = [square.delay(x) for x in range(n)]
        submit_delay = time.perf_counter() - start
        assert len(sent) == n
        figures["submit_us_per_task_delay"] = submit_delay * per_us
        figures["bulk_speedup"] = submit_delay / submit_map
        _purge(app)
    app.backend.client.flushdb()
    return figures


def _big_result(mb: int = 100) -> dict[str, float]:
    """Runs in a child interpreter: is a large result still resident after ``del``?"""
    import ctypes

    import celerynb

    sys.path.insert(0, str(HERE))
    from _bench_tasks import big_string, noop

    cluster = celerynb.LocalCluster().start()  # the default in-kernel cluster, own embedded server
    try:
        for _ in range(3):
            noop.delay(1).get(timeout=30)  # warm: connections, result consumer, monitor
        gc.collect()
        time.sleep(0.5)
        base = _rss_mb()
        result = big_string.delay(mb)
        value = result.get(timeout=300)
        assert len(value) == mb * 2**20
        peak = _rss_mb() - base
        del value, result
        gc.collect()
        time.sleep(1.0)  # whatever a background thread still holds, give it time to drop it
        gc.collect()
        retained = _rss_mb() - base
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            trimmed = _rss_mb() - base
        except OSError:  # not glibc
            trimmed = float("nan")
        return {"rss_retained_mb_after_del_100mb_result": retained, "rss_peak_growth_mb_100mb_result": peak,
                "rss_retained_mb_after_del_100mb_result_trimmed": trimmed}
    finally:
        cluster.stop()


def _sweeps(app, monitor, ids: list[str]) -> tuple[list[float], list[float]]:
    """Seconds of 3 cold and 3 steady reconcile sweeps over ``ids``; empty lists when the
    monitor no longer has the internals this reaches for (``_read``, ``_payloads``; checked on
    today's monitor), so that the memory figures still come out."""
    from celerynb.tracking.backend_source import BackendSource

    if not hasattr(monitor, "_read") or not hasattr(monitor, "_payloads"):
        print("bench_scaling: the monitor has no _read/_payloads: sweep figures skipped", file=sys.stderr)
        return [], []
    source = BackendSource.open(app)
    cold, steady = [], []
    try:
        for _ in range(3):
            with monitor._lock:
                monitor._payloads.clear()  # as if never read: every payload decoded again
            start = time.perf_counter()
            monitor._read(source, ids)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            monitor._read(source, ids)  # steady state: payloads compared, only changes decoded
            steady.append(time.perf_counter() - start)
    finally:
        source.close()
    return cold, steady


def _purge(app) -> None:
    with app.connection_for_write() as conn:
        for queue in app.amqp.queues.values():
            queue.bind(conn.default_channel).purge()


def _label(n: int) -> str:
    return f"{n // 1000}k"


def run(quick: bool = False) -> dict[str, float]:
    from celerynb.cluster.server import EmbeddedServer

    sizes = [1000, 5000] if quick else [1000, 10_000, 50_000, 100_000]
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
                if ("rss" in name) and n not in sizes[-2:]:
                    continue
                figures[f"{name}_{_label(n)}"] = round(value, 3)
    finally:
        srv.stop()
    # Not on the shared server: the default cluster as a notebook starts it, in a fresh interpreter.
    env = {k: v for k, v in os.environ.items() if k not in (_URL_ENV, "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--big-result"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=HERE.parent)
    if done.returncode != 0:
        raise RuntimeError(f"bench_scaling's 100 MB result failed:\n{done.stderr[-2000:]}")
    figures.update({k: round(v, 3) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()})
    return figures


if __name__ == "__main__":
    if "--big-result" in sys.argv:
        print(json.dumps(_big_result()))
    elif "--size" in sys.argv:
        print(json.dumps(_one_size(int(sys.argv[sys.argv.index("--size") + 1]))))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
