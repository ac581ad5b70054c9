"""The shared task monitor: sweep cost, push latency, awaiting cost, table overhead, idle CPU.

Figures (same private embedded server, same run; ratios against the naive way):
``monitor_sweep_speedup`` (per-task ``AsyncResult.state`` polling of N ids / one reconcile
sweep), ``update_latency_median_ms`` (``update_state`` in a worker -> monitor listener),
``await_redis_commands_ratio`` (guide's ``while not ready(): sleep(0.5)`` loop / ``results.gather``,
counted with INFO commandstats), ``after_last_finish_ms`` (last task done -> gather returns),
``table_submit_throughput_ratio`` (5,000 submits with a live TaskTable / without),
``watch_cpu_percent`` (kernel CPU while watching 10,000 running tasks).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid

from celery import Celery


def _app(url: str) -> Celery:
    app = Celery("bench-monitor", broker=url, backend=url)
    app.config_from_object("celerynb.workers.settings")
    app.conf.broker_url = url
    app.conf.result_backend = url
    return app


def _commands(client) -> int:
    return sum(v["calls"] for k, v in client.info("commandstats").items() if k.startswith("cmdstat_"))


def _sweep(app, n: int, repeats: int) -> dict[str, float]:
    from celery.result import AsyncResult

    from celerynb.tracking.backend_source import BackendSource
    from celerynb.tracking.monitor import TaskMonitor

    ids = [str(uuid.uuid4()) for _ in range(n)]
    for tid in ids:
        app.backend.store_result(tid, {"progress": 50, "current": 1, "total": 2}, "PROGRESS")
    naive, sweep = [], []
    source = BackendSource.open(app)
    mon = TaskMonitor(app)
    with mon._lock:
        for tid in ids:
            mon._snapshots[tid] = mon.snapshot(tid)
    for _ in range(repeats):
        start = time.perf_counter()
        for tid in ids:
            AsyncResult(tid, app=app).state  # noqa: B018 - one GET each, the naive way
        naive.append(time.perf_counter() - start)
        start = time.perf_counter()
        mon._read(source, ids)  # steady state: payloads compared, only changes decoded
        sweep.append(time.perf_counter() - start)
    source.close()
    return {"monitor_sweep_speedup": statistics.median(naive) / statistics.median(sweep),
            "naive_poll_sweep_ms": statistics.median(naive) * 1000, "monitor_sweep_ms": statistics.median(sweep) * 1000}


def _latency(app, samples: int) -> float:
    from celerynb.cluster.inkernel import InProcessWorker, stop_workers
    from celerynb.tracking.monitor import get_monitor

    @app.task(bind=True, name="bench.ticker")
    def ticker(self, n):
        for i in range(n):
            self.update_state(state="PROGRESS", meta={"t": time.time(), "current": i, "total": n})
            time.sleep(0.02)
        return n

    worker = InProcessWorker(app, pool="threads", concurrency=2).start()
    try:
        mon = get_monitor(app)
        lags: list[float] = []
        r = ticker.delay(samples)
        mon.add_listener(lambda s: lags.append(time.time() - s.info["t"]) if s.state == "PROGRESS" else None, [r.id])
        mon.track([r.id])
        mon.wait([r.id], timeout=60)
    finally:
        stop_workers([worker])
    return statistics.median(lags[1:]) * 1000 if len(lags) > 1 else float("nan")


def _await_cost(app, client, n: int) -> dict[str, float]:
    from celery.result import AsyncResult

    from celerynb.tracking import awaiting as results

    async def finish_later(ids, delay):
        await asyncio.sleep(delay)
        for tid in ids:
            app.backend.store_result(tid, 1, "SUCCESS")
        return time.perf_counter()

    async def guide(ids):
        async def one(tid):
            task = AsyncResult(tid, app=app)
            while not task.ready():
                await asyncio.sleep(0.5)
            return task.result
        done_at = asyncio.create_task(finish_later(ids, 1.0))
        await asyncio.gather(*(one(t) for t in ids))
        return await done_at

    async def ours(ids):
        done_at = asyncio.create_task(finish_later(ids, 1.0))
        await results.gather(*ids, app=app, timeout=60)
        return await done_at

    asyncio.run(finish_later([str(uuid.uuid4()) for _ in range(n)], 0))  # warm: connection setup counts too
    ids = [str(uuid.uuid4()) for _ in range(n)]
    before = _commands(client)
    asyncio.run(finish_later(ids, 0))
    writes = _commands(client) - before  # the cost of finishing the tasks, counted by neither
    out = {}
    for label, fn in (("guide", guide), ("gather", ours)):
        ids = [str(uuid.uuid4()) for _ in range(n)]
        before = _commands(client)
        start = time.perf_counter()
        finished = asyncio.run(fn(ids))
        end = time.perf_counter()
        # Subtract the writes that finish the tasks (SET + PUBLISH each, pipelined).
        out[label] = _commands(client) - before - writes
        out[f"{label}_after_ms"] = (end - finished) * 1000
        _ = start
    # gather needs at least SUBSCRIBE + MGET + UNSUBSCRIBE; counts below that are noise of the baseline.
    return {"await_redis_commands_ratio": out["guide"] / max(3, out["gather"]),
            "gather_redis_commands": out["gather"], "guide_redis_commands": out["guide"],
            "after_last_finish_ms": out["gather_after_ms"], "guide_after_last_finish_ms": out["guide_after_ms"]}


def _submit_ratio(app, n: int) -> float:
    from celerynb.display.table import TaskTable
    from celerynb.tracking.submitted import enable_submit_log

    enable_submit_log()

    @app.task(name="bench.noop")
    def noop(x):
        return x

    def rate() -> float:
        start = time.perf_counter()
        for i in range(n):
            noop.delay(i)
        return n / (time.perf_counter() - start)

    rate()  # warm up connections
    without = rate()
    table = TaskTable(app=app)
    with_table = rate()
    time.sleep(1.0)  # let the table catch up before closing
    table.close()
    app.connection_for_write().default_channel.client.flushdb()
    return with_table / without


def _watch_cpu(app, n: int, seconds: float) -> float:
    from celerynb.tracking.monitor import TaskMonitor

    ids = [str(uuid.uuid4()) for _ in range(n)]
    for tid in ids:
        app.backend.store_result(tid, {"progress": 10}, "PROGRESS")
    mon = TaskMonitor(app)
    mon.track(ids)
    mon.wait(ids[:1], timeout=0.01) if False else None  # noqa: B018
    time.sleep(2.0)  # initial subscribe + read done
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
    mon.stop()
    return cpu


def run(quick: bool = False) -> dict[str, float]:
    import redis

    from celerynb.cluster.server import EmbeddedServer

    srv = EmbeddedServer().start()
    try:
        app = _app(srv.url)
        client = redis.Redis.from_url(srv.url)
        figures: dict[str, float] = {}
        figures.update(_sweep(app, 2000 if quick else 10_000, 3 if quick else 5))
        client.flushdb()
        figures["update_latency_median_ms"] = _latency(app, 20 if quick else 60)
        figures.update(_await_cost(app, client, 200 if quick else 1000))
        client.flushdb()
        figures["watch_cpu_percent"] = _watch_cpu(app, 2000 if quick else 10_000, 2.0 if quick else 5.0)
        client.flushdb()
        figures["table_submit_throughput_ratio"] = _submit_ratio(app, 1000 if quick else 5000)
        client.close()
        return {k: round(v, 3) for k, v in figures.items()}
    finally:
        srv.stop()


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
