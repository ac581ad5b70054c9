"""The canvas tree: backend round trips per refresh, and refresh time, at 100 and 10,000 members.

A tree of a chain whose second step is a group of N members is followed on a private embedded
server (no worker: the states are written as a worker would, ``store_result`` publishing
each). For each of ``REFRESHES`` refreshes, 5 members move to PROGRESS, their pushed states
reach the tree, and the tree is redrawn (text twin: the rows, bars and counts). The server's
``INFO commandstats`` counts the reads (``mget``/``get``) in between; the baseline is the same
run's first picture (the monitor's one-time read of every id). Figures:

- ``canvas_round_trips_per_refresh_<N>``: reads per refresh (target: the same at 100 and
  10,000, at most one reconcile slice, i.e. <= 0.1 over ten refreshes);
- ``canvas_first_picture_round_trips_<N>``: reads to follow N ids at first (one MGET per 1,000);
- ``canvas_refresh_ms_<N>``: median redraw time, ms (bounded rows: flat in N is the goal).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid

REFRESHES = 10
READS = ("mget", "get", "hget", "hmget", "exists")


def _reads(client) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in READS)


def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench_canvas: the tree did not see the states in time")
        time.sleep(0.005)


def run(quick: bool = False) -> dict[str, float]:
    import redis

    import celerynb
    from celerynb.display.tree import TextTree
    from celerynb.tracking.canvas import CHAIN, GROUP, TASK, CanvasNode

    figures: dict[str, float] = {}
    with celerynb.LocalCluster(workers=0) as cluster:
        app = cluster.app
        client = redis.Redis.from_url(app.conf.result_backend)
        for members in (100, 10_000):
            ids = [str(uuid.uuid4()) for _ in range(members + 1)]
            tree = CanvasNode(CHAIN, children=[CanvasNode(TASK, ids[0], "bench.first"),
                                               CanvasNode(GROUP, children=[CanvasNode(TASK, t, "bench.member")
                                                                            for t in ids[1:]])])
            start_reads = _reads(client)
            display = TextTree(tree, app)
            monitor = display.monitor
            _until(lambda m=monitor, n=members: not m._to_subscribe and m.stats["mget_keys"] >= n)
            time.sleep(0.2)
            figures[f"canvas_first_picture_round_trips_{members}"] = _reads(client) - start_reads
            before, times = _reads(client), []
            for step in range(REFRESHES):
                moved = ids[step * 5:step * 5 + 5]
                for tid in moved:
                    app.backend.store_result(tid, {"progress": 10 + step}, "PROGRESS")
                _until(lambda moved=moved, d=display: all(d.model.state(t).state == "PROGRESS" for t in moved))
                began = time.perf_counter()
                display.refresh(background=False)
                display.text()
                times.append((time.perf_counter() - began) * 1000)
            figures[f"canvas_round_trips_per_refresh_{members}"] = (_reads(client) - before) / REFRESHES
            figures[f"canvas_refresh_ms_{members}"] = statistics.median(times)
            display.close()
        client.close()
    return {k: round(v, 3) for k, v in figures.items()}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
