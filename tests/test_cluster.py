"""The local cluster on the embedded server: start on demand, status, stop, restart."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
from conftest import wait_for

import celerynb
from celerynb import config
from celerynb.cluster import server


def test_first_task_starts_embedded_server_and_worker(app):
    from celerynb.workers.tasks import process_document

    assert celerynb.current() is None
    result = process_document.delay("doc1", {"format": "markdown"})
    output = result.get(timeout=10)
    assert output["content"].startswith("# Getting Started with Distributed Queues")
    cluster = celerynb.current()
    assert cluster is not None and cluster.source == "embedded"
    assert [w["kind"] for w in cluster.status()["workers"]] == ["thread"]


def test_status_masks_password_and_lists_queues(cluster):
    status = cluster.status()
    password = cluster.server.password
    assert status["broker"].startswith("redis://:***@127.0.0.1:")
    assert password not in repr(cluster) and password not in cluster._repr_html_()
    assert password not in str(status)
    assert set(status["queues"]) >= {"default", "high-priority"}


def test_server_binds_loopback_and_requires_password(cluster):
    import redis

    srv = cluster.server
    assert srv.host == "127.0.0.1"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=srv.port).ping()
    # Not reachable on any other local address of this machine: 127.0.0.2 (Linux routes all of
    # 127/8 to the loopback interface), ::1, and every interface's own address, read from the
    # interfaces themselves (no resolver: the host name may well resolve to 127.0.x.1).
    others = _other_local_addresses()
    assert "127.0.0.2" in others and "::1" in others, others
    # A server listening on every address answers on each of them, so a refusal below means
    # that the embedded server does not listen there (not that the address is unusable).
    with _wildcard_listeners() as port:
        for address in others:
            socket.create_connection((address, port), timeout=2).close()
    answered = []
    for address in others:
        try:
            socket.create_connection((address, srv.port), timeout=2).close()
            answered.append(address)
        except ConnectionRefusedError:
            pass
    assert not answered, f"the embedded server (bound to {srv.host}) also answers on {answered}"


def _other_local_addresses() -> list[str]:
    import psutil

    found = ["127.0.0.2"]
    if socket.has_ipv6:
        found.append("::1")
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and addr.address != "127.0.0.1":
                found.append(addr.address)
            elif addr.family == socket.AF_INET6 and not addr.address.startswith("fe80"):  # link-local needs a scope
                found.append(addr.address)
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def _wildcard_listeners():
    """Listen on one port on every IPv4 and IPv6 address; yield the port."""
    v4 = socket.create_server(("0.0.0.0", 0))
    port = v4.getsockname()[1]
    v6 = None
    try:
        if socket.has_ipv6:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::", port))
            v6.listen()
        yield port
    finally:
        v4.close()
        if v6 is not None:
            v6.close()


def test_start_is_get_or_create(cluster):
    assert celerynb.start() is cluster
    assert len(cluster.workers) == 1


def test_stop_then_start_again_in_one_process(app):
    from celerynb.workers.tasks import analyze_content

    first = celerynb.start()
    pid = first.server.pid
    assert analyze_content.delay("One two three. Four.").get(timeout=10)["words"] == 4
    celerynb.stop()
    assert first.running is False
    assert not config.pid_alive(pid) or psutil_status_zombie(pid)
    second = celerynb.start()
    assert second is not first and second.server.pid != pid
    assert analyze_content.delay("Five six.").get(timeout=10)["words"] == 2


def psutil_status_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_context_manager_stops_everything(app):
    with celerynb.LocalCluster(app, workers=2, pool="solo") as cluster:
        pid = cluster.server.pid
        log_dir = cluster.log_dir
        assert len(cluster.status()["workers"]) == 2
    assert not os.path.exists(log_dir)
    assert psutil_status_zombie(pid)
    assert celerynb.current() is None


def test_second_cluster_is_refused_while_one_runs(cluster):
    with pytest.raises(celerynb.ClusterError, match="already runs"):
        celerynb.LocalCluster(cluster.app).start()


def test_missing_binary_names_the_fix(monkeypatch):
    monkeypatch.setenv("CELERYNB_SERVER_BINARY", "/nonexistent/valkey-server")
    with pytest.raises(server.ServerError, match="missing.*CELERY_BROKER_URL"):
        server.EmbeddedServer().start()


def test_killed_process_takes_its_server_and_worker_processes_along():
    """A kernel killed by jupyter_client runs no exit hook: the children must die anyway."""
    import subprocess
    import sys

    import psutil
    from conftest import wait_for

    code = (
        "import celerynb, os\n"
        "c = celerynb.start(workers=1, processes=1)\n"
        "print(c.server.pid, c.processes[0].pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr

    def all_gone() -> bool:
        return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)

    wait_for(all_gone, timeout=30, message="server and worker process to exit")


def test_worker_processes_and_embedded_beat(app):
    """``processes=N`` runs tasks in separate ``celery worker`` processes; ``beat=True`` sends the schedule."""
    import psutil
    from conftest import wait_for

    from celerynb.workers import documents, tasks

    saved = app.conf.beat_schedule
    app.conf.beat_schedule = {
        "doc3-twice-a-second": {"task": "tasks.process_document", "schedule": 0.5, "args": ("doc3", {"format": "html"})}
    }
    output = documents.processed_dir() / "doc3.json"
    output.unlink(missing_ok=True)
    try:
        with celerynb.LocalCluster(app, workers=0, processes=1, beat=True) as cluster:
            proc = cluster.processes[0]
            result = tasks.analyze_content.delay("only a process runs this")
            assert result.get(timeout=30)["words"] == 5
            assert result.worker == proc.name and psutil.Process(proc.pid).is_running()
            assert [w["kind"] for w in cluster.status()["workers"]] == ["process"] and cluster.status()["beat"]
            wait_for(output.exists, timeout=30, message="beat to send the scheduled task")
            pid = proc.pid
        assert psutil_status_zombie(pid)
        assert "<h1>" in output.read_text()
    finally:
        app.conf.beat_schedule = saved
        output.unlink(missing_ok=True)


def test_processes_n_is_one_prefork_worker_with_n_children(app):
    """As users run Celery (``celery worker -c N``): measured faster than N one-child workers."""
    import psutil

    from celerynb.workers.tasks import long_process

    with celerynb.LocalCluster(app, workers=0, processes=3) as local:
        assert len(local.processes) == 1
        parent = psutil.Process(local.processes[0].pid)
        assert len(parent.children()) == 3
        busy = [long_process.delay([0, 1], delay=0.3) for _ in range(3)]
        # All three run at once: each child took one.
        wait_for(lambda: all(r.state in ("STARTED", "PROGRESS") for r in busy), timeout=30,
                 message="three tasks running at once")
        assert [r.get(timeout=30)["processed"] for r in busy] == [2, 2, 2]


@pytest.mark.parametrize("level", ["", "INFO"], ids=["default", "CELERYNB_WORKER_LOGLEVEL=INFO"])
def test_worker_log_has_celerys_per_task_lines_only_when_asked(app, monkeypatch, level):
    """Celery's "received"/"succeeded in" lines cost a record and a file write per task: off by
    default, as with ``celery worker``'s default level; the rest of the log stays."""
    from celery.signals import task_postrun

    from celerynb.workers.tasks import process_document

    monkeypatch.setenv("CELERYNB_WORKER_LOGLEVEL", level)
    cluster = celerynb.start()
    ended = []

    def postrun(task_id=None, **_):  # sent after Celery's "succeeded in" line would be written
        ended.append(task_id)

    task_postrun.connect(postrun, weak=False)
    try:
        result = process_document.delay("doc1", {"format": "markdown"})
        result.get(timeout=10)
        wait_for(lambda: result.id in ended, message="the task's postrun")
    finally:
        task_postrun.disconnect(postrun)
    text = open(cluster.log_file).read()
    assert ("succeeded in" in text) == bool(level), text[-2000:]
    assert "Connected to redis://" in text or "ready" in text, text[-2000:]
