"""Round trip of a trivial task: celerynb's in-process cluster against Celery's own ``start_worker``.

Both run in this process, on the same private embedded server, with the same app, one after
the other (Celery's worker state is process-wide), in alternating rounds so that machine
noise hits both alike. Figures:

``inkernel_rtt_ratio``
    median round trip through ``celerynb.LocalCluster`` (its default: threads pool) divided by
    the same through ``celery.contrib.testing.worker.start_worker`` with the same pool and
    concurrency. Target: <= 1.2.
``inkernel_rtt_ms`` / ``start_worker_rtt_ms``
    the two medians, in milliseconds.
``inkernel_solo_rtt_ratio``, ``inkernel_solo_rtt_ms``, ``start_worker_solo_rtt_ms``
    the same with the solo pool (``start_worker``'s default).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from celery import Celery


def _noop_task(app: Celery):
    name = "bench.noop"
    if name not in app.tasks:

        @app.task(name=name)
        def noop() -> None:
            """Does nothing: the round trip is all there is to time."""

    return app.tasks[name]


def _round_trips(task, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        task.delay().get(timeout=10)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        task.delay().get(timeout=10)
        samples.append(time.perf_counter() - start)
    return samples


def _celerynb(app: Celery, pool: str, concurrency: int) -> AbstractContextManager:
    import celerynb

    return celerynb.LocalCluster(app, pool=pool, concurrency=concurrency)


def _start_worker(app: Celery, pool: str, concurrency: int) -> AbstractContextManager:
    from celery.contrib.testing.worker import start_worker

    return start_worker(app, pool=pool, concurrency=concurrency, perform_ping_check=False, loglevel="WARNING")


def _compare(app: Celery, pool: str, concurrency: int, n: int, warmup: int, rounds: int) -> tuple[float, float]:
    """Median round trips (seconds) of celerynb and start_worker, alternating ``rounds`` times."""
    task = _noop_task(app)
    samples: dict[str, list[float]] = {"celerynb": [], "start_worker": []}
    runners: dict[str, Callable[..., AbstractContextManager]] = {"celerynb": _celerynb, "start_worker": _start_worker}
    for i in range(rounds):
        order = ("celerynb", "start_worker") if i % 2 == 0 else ("start_worker", "celerynb")
        for name in order:
            with runners[name](app, pool, concurrency):
                samples[name] += _round_trips(task, n, warmup)
    return statistics.median(samples["celerynb"]), statistics.median(samples["start_worker"])


def run(quick: bool = False) -> dict[str, float]:
    """Measure both pools; ``quick`` takes fewer samples (seconds instead of tens of seconds)."""
    from celerynb.cluster import server
    from celerynb.workers import urls
    from celerynb.workers.celery_app import app

    logging.getLogger("celery").setLevel(logging.WARNING)
    n, warmup, rounds = (100, 20, 2) if quick else (300, 50, 4)
    srv = server.EmbeddedServer().start()
    try:
        app.conf.broker_url  # noqa: B018 - load the configuration before pointing it
        urls.apply(app, srv.url, srv.url, "explicit")
        figures: dict[str, float] = {}
        ours, theirs = _compare(app, "threads", 4, n, warmup, rounds)
        figures["inkernel_rtt_ratio"] = ours / theirs
        figures["inkernel_rtt_ms"] = ours * 1000
        figures["start_worker_rtt_ms"] = theirs * 1000
        ours, theirs = _compare(app, "solo", 1, n, warmup, rounds)
        figures["inkernel_solo_rtt_ratio"] = ours / theirs
        figures["inkernel_solo_rtt_ms"] = ours * 1000
        figures["start_worker_solo_rtt_ms"] = theirs * 1000
        return {k: round(v, 3) for k, v in figures.items()}
    finally:
        urls.forget(app)
        srv.stop()


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
