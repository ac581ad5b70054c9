"""The cluster monitor's CPU while it follows 10,000 events a minute, and what task-sent events cost a ``.delay()``.

A second process (a plain Celery app and Celery's own ``EventDispatcher``) sends what a busy
cluster sends: for each task ``task-sent``, ``task-received``, ``task-started`` and
``task-succeeded`` (about 42 tasks/s), plus a heartbeat every 2 s from each of 4 workers, at
10,000 events/min, on a private embedded Valkey server. This process runs a
``ClusterMonitor`` on it: the events thread (Celery's ``State``, bounded), its queue and worker
readings every second, the result-backend follow of running tasks, and (``_rendered``) the
HTML a live display redraws twice a second. CPU is this process's CPU time over wall time
(% of one core), measured after a warm-up.

Figures:

- ``cluster_monitor_cpu_pct``: events + readings + two redraws a second;
- ``cluster_monitor_events_only_cpu_pct``: the same without redraws (a monitor not shown);
- ``cluster_monitor_events_per_min``: events the monitor received per minute (the load it had);
- ``delay_sent_event_us`` / ``delay_no_sent_event_us``: one ``.delay()`` (no worker) with and
  without ``task_send_sent_event``, alternating blocks; ``delay_sent_event_cost_ratio``: their ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

RATE_PER_MIN = 10_000

GENERATOR = r'''
import sys, time, uuid
from celery import Celery
url, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) / 60.0
app = Celery("bench-events", broker=url)
workers = [f"bench-{i}@host" for i in range(4)]
with app.connection_for_write() as conn:
    dispatchers = {w: app.events.Dispatcher(conn, hostname=w) for w in workers + ["client@host"]}
    start = time.monotonic()
    sent, n, beat = 0, 0, 0.0
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now - beat >= 2.0:
            beat = now
            for w in workers:
                dispatchers[w].send("worker-heartbeat", freq=2.0, active=1, processed=n)
                sent += 1
        tid, worker = str(uuid.uuid4()), workers[n % 4]
        n += 1
        dispatchers["client@host"].send("task-sent", uuid=tid, name="bench.noop", args="(1,)", kwargs="{}",
                                        queue="default", retries=0, eta=None, expires=None)
        dispatchers[worker].send("task-received", uuid=tid, name="bench.noop", args="(1,)", kwargs="{}",
                                 retries=0, eta=None, expires=None)
        dispatchers[worker].send("task-started", uuid=tid)
        dispatchers[worker].send("task-succeeded", uuid=tid, result="2", runtime=0.001)
        sent += 4
        pause = start + sent / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
print(sent)
'''


def _follow(url: str, seconds: float, render: bool) -> tuple[float, float]:
    """(CPU % of one core, events received per minute) of a monitor following the generator."""
    from celery import Celery

    from celerynb.display.cluster import ClusterMonitor

    app = Celery("bench-monitor", broker=url, backend=url, set_as_current=False)
    monitor = ClusterMonitor(app, enable_events=False)
    stop = threading.Event()

    def redraw() -> None:  # what a live display does: at most two pictures a second
        while not stop.wait(0.5):
            monitor._repr_html_()
            monitor.text()

    generator = subprocess.Popen([sys.executable, "-c", GENERATOR, url, str(seconds + 3), str(RATE_PER_MIN)],
                                 stdout=subprocess.PIPE, text=True)
    drawer = threading.Thread(target=redraw, daemon=True)
    try:
        if render:
            drawer.start()
        time.sleep(3)  # warm-up: the generator's interpreter starts, the rate settles
        events0, cpu0, wall0 = sum(monitor.events.counts.values()), time.process_time(), time.monotonic()
        time.sleep(seconds)
        events1, cpu1, wall1 = sum(monitor.events.counts.values()), time.process_time(), time.monotonic()
    finally:
        stop.set()
        generator.wait(60)
        monitor.stop()
        app.close()
    return 100.0 * (cpu1 - cpu0) / (wall1 - wall0), (events1 - events0) * 60.0 / (wall1 - wall0)


def _delay_cost(url: str, blocks: int, n: int) -> tuple[float, float]:
    """µs per ``.delay()`` with and without task-sent events, alternating blocks (medians)."""
    import statistics

    from celery import Celery

    app = Celery("bench-delay", broker=url, backend=url, set_as_current=False)
    app.config_from_object("celerynb.workers.settings")
    queue = f"bench-delay-{os.getpid()}"
    def delay_target() -> None:
        return None

    task = app.task(name="bench.delay_target", shared=False)(delay_target)
    found: dict[bool, list[float]] = {True: [], False: []}
    try:
        for block in range(blocks * 2):
            sent_event = block % 2 == 0
            app.conf.task_send_sent_event = sent_event
            start = time.perf_counter()
            for _ in range(n):
                task.apply_async(queue=queue)
            found[sent_event].append((time.perf_counter() - start) / n * 1e6)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
    finally:
        app.close()
    return statistics.median(found[True]), statistics.median(found[False])


def run(quick: bool = False) -> dict[str, float]:
    from celerynb.cluster import server

    url = server.shared_server().url
    seconds = 10.0 if quick else 30.0
    try:
        rendered, rate = _follow(url, seconds, render=True)
        events_only, _ = _follow(url, seconds, render=False)
        with_event, without = _delay_cost(url, 3 if quick else 7, 300 if quick else 1000)
    finally:
        server.stop_shared_server()
    return {
        "cluster_monitor_cpu_pct": round(rendered, 1),
        "cluster_monitor_events_only_cpu_pct": round(events_only, 1),
        "cluster_monitor_events_per_min": round(rate),
        "delay_sent_event_us": round(with_event, 1),
        "delay_no_sent_event_us": round(without, 1),
        "delay_sent_event_cost_ratio": round(with_event / without, 3),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
