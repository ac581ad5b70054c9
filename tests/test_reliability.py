"""Reliability: worker crashes, server restarts, an unreachable server, load, and secrets.

Real servers, real worker processes, real signals; every process is stopped by PID. Run this
file alone with ``pytest -m reliability``. The load test submits 5,000 tasks, or 50,000 with
``CELERYNB_FULL_LOAD=1``.

What survives a restart of the embedded server (documented here and in the README):
- without persistence (the default) the server's memory is gone: queued messages and stored
  results are lost. Tracked tasks that were still queued end as ``LOST`` (the display says
  so and finishes instead of waiting forever); the monitor and workers reconnect by themselves
  and new tasks run.
- with ``LocalCluster(persistent=True)`` (AOF) queued messages and results survive: the same
  tasks run once a worker is there.
- while the server is down, displays say "disconnected" within seconds and resume after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

import celerynb
from celerynb.bulk import map as bulk_map
from celerynb.display.status import ClusterStatus
from celerynb.tracking.monitor import LOST, get_monitor

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[1]
UNMASKED = re.compile(r"redis://[^:/@\s\"']*:(?!\*+@)[^@\s/\"']+@")

_TASKS = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from celerynb.workers.celery_app import app


    @app.task(name="reliability.crashy", acks_late=True, reject_on_worker_lost=True)
    def crashy(key, marker_dir):
        path = Path(marker_dir) / key
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        attempts = len(path.read_text().split())
        if key == "victim" and attempts == 1:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the test SIGKILLs this process here
                time.sleep(0.05)
        return {"key": key, "attempts": attempts}


    @app.task(name="reliability.gated", acks_late=True, reject_on_worker_lost=True)
    def gated(marker_dir):
        path = Path(marker_dir) / "gated"
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        attempts = len(path.read_text().split())
        release = Path(marker_dir) / "release"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (attempts == 1 or not release.exists()):
            time.sleep(0.05)  # the first run is killed here; the second waits for the test
        return attempts


    @app.task(name="reliability.square")
    def square(x):
        return x * x
    """
)


@pytest.fixture(scope="module")
def task_module(tmp_path_factory):
    """Tasks importable by this process and by worker processes (``--include``)."""
    folder = tmp_path_factory.mktemp("reliability_tasks")
    (folder / "reliability_tasks.py").write_text(_TASKS)
    sys.path.insert(0, str(folder))
    import reliability_tasks

    yield reliability_tasks, folder
    sys.path.remove(str(folder))


def _add_process(cluster, folder, concurrency=1):
    return cluster.add_process(concurrency=concurrency, extra_args=["--include", "reliability_tasks"],
                               env={"PYTHONPATH": str(folder)})


def _restart(srv) -> None:
    """Stop and start the same server (same port and password), as a crash and restart would."""
    srv.stop()
    srv.start()


def test_worker_crash_is_redelivered_shown_and_nothing_is_lost(app, task_module, tmp_path):
    tasks, folder = task_module
    markers = tmp_path / "markers"
    markers.mkdir()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        proc = _add_process(cluster, folder, concurrency=2)
        keys = ["victim", "a", "b", "c", "d", "e"]
        group = bulk_map(tasks.crashy, [(k, str(markers)) for k in keys])
        display = celerynb.progress(group, widget=False)
        texts: list[str] = []
        get_monitor(app).add_listener(lambda _s: texts.append(display.text()), [r.id for r in group.results])
        victim_file = markers / "victim"
        pid = int(wait_for(lambda: victim_file.exists() and victim_file.read_text().split(), timeout=30,
                           message="the victim task to start")[0])
        assert pid in {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        os.kill(pid, signal.SIGKILL)  # a prefork child of our worker process, mid-task
        values = display.wait(timeout=90)
        assert [v["key"] for v in values] == keys
        assert values[0]["attempts"] == 2 and all(v["attempts"] == 1 for v in values[1:])
        assert sum(1 for r in group.results if get_monitor(app).snapshot(r.id).state == "SUCCESS") == len(keys)
        final = display.text()
        assert "6/6 done" in final and "SUCCESS 6" in final and "redelivered 1" in final
        assert not any(r.id in final for r in group.results)  # names, arguments, states: no ids
        assert "crashy('victim', " in final  # rows of one task name are told apart by their arguments
        assert any("STARTED (redelivered 1x" in t for t in texts), texts[-3:]
        # Secrets: the worker logs and the server log never hold the password.
        logs = [p for p in Path(cluster.log_dir).iterdir() if p.is_file()]
        logs.append(Path(cluster.server.data_dir) / "server.log")
        assert logs and any("reliability.crashy" in p.read_text(errors="replace") for p in logs)
        for log in logs:
            text = log.read_text(errors="replace")
            assert cluster.server.password not in text, log
            assert not UNMASKED.search(text), log
    finally:
        cluster.stop()


def test_killed_worker_main_process_is_shown_and_its_task_redelivered_at_once(app, task_module, tmp_path):
    """Reported: the display said STARTED for 85+ s, the message sat in ``unacked`` for the
    visibility timeout (3600 s) and status still listed the dead worker."""
    tasks, folder = task_module
    markers = tmp_path / "markers"
    markers.mkdir()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        proc = _add_process(cluster, folder, concurrency=1)
        victim = tasks.crashy.delay("victim", str(markers))
        monitor = get_monitor(app)
        monitor.track([victim.id])
        victim_file = markers / "victim"
        wait_for(lambda: victim_file.exists() and victim_file.read_text().split(), timeout=30,
                 message="the victim task to start")
        wait_for(lambda: monitor.snapshot(victim.id).state == "STARTED", timeout=10, message="STARTED seen")
        killed_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's main process and its prefork child
        wait_for(lambda: monitor.snapshot(victim.id).state == "WORKER_LOST", timeout=15,
                 message="the display to show the lost worker")
        detected = time.monotonic() - killed_at
        shown = celerynb.progress(victim, widget=False).text()
        assert "WORKER LOST" in shown and "died: requeued" in shown, shown
        status = repr(ClusterStatus(app, cluster))
        assert f"{proc.name.split('@')[0]} (process, prefork x1, DIED)" in status
        # A fresh worker takes the requeued message at once, not after the visibility timeout.
        _add_process(cluster, folder, concurrency=1)
        assert victim.get(timeout=60) == {"key": "victim", "attempts": 2}
        redelivered = time.monotonic() - killed_at
        print(f"\nworker loss detected in {detected:.1f} s; task done {redelivered:.1f} s after the kill")
        with app.connection_for_write() as conn:
            assert not conn.default_channel.client.hlen("unacked")
    finally:
        cluster.stop()


def test_redelivery_is_shown_to_a_display_that_missed_the_first_run(app, task_module, tmp_path):
    """Reported: the display missed a redelivery in 2 of 8 runs (it had not seen the first STARTED)."""
    tasks, folder = task_module
    markers = tmp_path / "markers"
    markers.mkdir()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        proc = _add_process(cluster, folder, concurrency=1)
        victim = tasks.gated.delay(str(markers))
        runs = markers / "gated"
        pid = int(wait_for(lambda: runs.exists() and runs.read_text().split(), timeout=30,
                           message="the first run to start")[0])
        os.kill(pid, signal.SIGKILL)  # the prefork child: the worker requeues the message itself
        wait_for(lambda: len(runs.read_text().split()) == 2, timeout=30, message="the second run")
        display = celerynb.progress(victim, widget=False)  # opened only now: it never saw the first run
        wait_for(lambda: "redelivered 1" in display.text(), timeout=10, message="the redelivery shown")
        (markers / "release").touch()
        assert victim.get(timeout=30) == 2
        assert proc.alive
    finally:
        cluster.stop()


def test_restart_without_persistence_marks_queued_tasks_lost_and_everything_reconnects(app, task_module):
    tasks, _ = task_module
    cluster = celerynb.LocalCluster(workers=1).start()  # consumes default, not "parked"
    try:
        parked = bulk_map(tasks.square, range(20), queue="parked")
        display = celerynb.progress(parked, widget=False)
        assert tasks.square.delay(3).get(timeout=30) == 9
        monitor = get_monitor(app)
        wait_for(lambda: monitor.mode == "redis", message="monitor connected")
        _restart(cluster.server)
        values = display.wait(timeout=30)  # ends: no spinning forever
        assert all(isinstance(v, RuntimeError) and "restarted without persistence" in str(v) for v in values)
        text = display.text()
        assert f"20/20 done · {LOST} 20" in text
        # The monitor, the in-kernel worker and this kernel's producers reconnect by themselves.
        again = bulk_map(tasks.square, range(10))
        snaps = monitor.wait([r.id for r in again.results], timeout=60)
        assert [snaps[r.id].info for r in again.results] == [i * i for i in range(10)]
        assert tasks.square.delay(4).get(timeout=30) == 16
    finally:
        cluster.stop()


def test_persistent_server_keeps_queued_tasks_and_display_shows_the_outage(app, task_module):
    tasks, _ = task_module
    cluster = celerynb.LocalCluster(workers=0, persistent=True).start()
    data_dir = cluster.server.data_dir
    try:
        group = bulk_map(tasks.square, range(30))
        display = celerynb.progress(group, widget=False)
        monitor = get_monitor(app)
        wait_for(lambda: monitor.connected and monitor.mode == "redis", message="monitor connected")
        srv = cluster.server
        srv.stop()
        start = time.monotonic()
        wait_for(lambda: "disconnected" in display.text(), timeout=10, message="the display to say disconnected")
        assert time.monotonic() - start < 10
        srv.start()
        wait_for(lambda: "disconnected" not in display.text(), timeout=15, message="the display to recover")
        cluster.add_worker()
        assert display.wait(timeout=60) == [i * i for i in range(30)]
        assert "30/30 done · SUCCESS 30" in display.text()
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_load_every_result_accounted_for_with_live_table_and_bounded_memory(app, task_module):
    """5,000 tasks (50,000 with CELERYNB_FULL_LOAD=1) through 2 worker processes."""

    tasks, folder = task_module
    n = 50_000 if os.environ.get("CELERYNB_FULL_LOAD") == "1" else 5_000
    cluster = celerynb.LocalCluster(workers=0).start()
    me = psutil.Process()
    peak = [me.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], me.memory_info().rss)

    table = None
    try:
        _add_process(cluster, folder)
        _add_process(cluster, folder)
        baseline = me.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        group = bulk_map(tasks.square, range(n))
        table = celerynb.TaskTable(group)
        table._live = True  # as when shown in a kernel: redrawn by the monitor's ticker
        display = celerynb.progress(group, widget=False)
        display.wait(timeout=600)
        stop.set()
        sampler.join()
        snaps = get_monitor(app).snapshots(r.id for r in group.results)
        ok = sum(1 for i, s in enumerate(snaps) if s.state == "SUCCESS" and s.info == i * i)
        assert ok == n, f"{n - ok} of {n} results missing or wrong"
        assert f"{n}/{n} done · SUCCESS {n}" in display.text()
        wait_for(lambda: "SUCCESS" in table.html, timeout=30, message="the live table redrawn")
        assert len(table.rows()) == table.limit
        workers = {s.worker for s in snaps[:200]} | {s.worker for s in snaps[-200:]}
        growth_mb = (peak[0] - baseline) / 2**20
        print(f"\nload: {n} tasks, RSS growth {growth_mb:.1f} MB, workers seen {len(workers)}")
        assert growth_mb < 60 + n * 8 / 1024, f"RSS grew {growth_mb:.0f} MB for {n} tasks"
    finally:
        stop.set()
        if table is not None:
            table.close()
        cluster.stop()


# -- security ---------------------------------------------------------------------------------
def test_embedded_server_needs_the_password_and_listens_on_loopback_only(cluster):
    srv = cluster.server
    with socket.create_connection((srv.host, srv.port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(128).startswith(b"-NOAUTH")
    with socket.create_connection((srv.host, srv.port), timeout=2) as sock:
        sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n")
        assert sock.recv(128).startswith(b"-WRONGPASS")
    listening = [c.laddr for c in psutil.Process(srv.pid).net_connections(kind="inet") if c.status == "LISTEN"]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}


def test_no_password_in_any_repr_or_display(cluster, task_module):
    tasks, _ = task_module
    password = cluster.server.password
    group = bulk_map(tasks.square, range(3))
    display = celerynb.progress(group, widget=False)
    display.wait(timeout=30)
    table = celerynb.TaskTable(group)
    try:
        shown = [repr(cluster), cluster._repr_html_(), json.dumps(cluster.status(), default=str),
                 repr(cluster.server), repr(get_monitor(cluster.app)), display.text(), display.summary_html(),
                 repr(table), table._repr_html_(), repr(group)]
        for text in shown:
            assert password not in text and not UNMASKED.search(text), text[:200]
    finally:
        table.close()


def test_saved_notebooks_hold_no_live_password():
    """Every tutorial notebook (each ``NN_*.md`` has its paired ``.ipynb``), outputs included."""
    live = [s.password for s in [__import__("celerynb.cluster.server", fromlist=["x"]).shared_server(start=False)] if s]
    folder = ROOT / "notebooks"
    tutorials = {p.with_suffix(".ipynb").name for p in folder.glob("[0-9][0-9]_*.md")}
    assert len(tutorials) >= 14, f"expected the 14 tutorials' sources in {folder}, found {sorted(tutorials)}"
    scanned: set[str] = set()
    masked = 0
    for path in sorted(folder.glob("**/*.ipynb")):
        text = path.read_text(errors="replace")
        match = UNMASKED.search(text)
        assert match is None, f"{path.name} holds an unmasked URL: {match.group(0)[:24]}..."
        for password in live:
            assert password not in text, path.name
        scanned.add(path.name)
        masked += text.count("redis://:***@")
    assert tutorials <= scanned, f"tutorial notebooks not scanned (missing): {sorted(tutorials - scanned)}"
    # The saved outputs do show broker URLs, masked: the check above had URLs to look at.
    assert masked, "no masked redis:// URL in any saved output: were the outputs stripped?"
