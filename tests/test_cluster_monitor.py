"""ClusterMonitor: every task of the cluster whoever sent it and whenever; "queued (position N)" vs "unknown".

Real servers, workers and processes: the tasks come from a second process with a plain Celery
app (no celerynb, Celery's defaults: no task-sent events), some sent before the monitor started
to a queue no worker consumes. On the embedded server with celerynb's in-kernel worker; on the
machine's Redis and RabbitMQ (a unique key prefix / unique queue names) with a plain
``celery worker -E`` process, where reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from conftest import RABBITMQ_URL, REDIS_URL, new_shell, reachable, wait_for

# A plain Celery project: the worker process imports it, the client process too.
PROJECT = '''
import os, threading
from celery import Celery

app = Celery("monproj", broker=os.environ["MON_BROKER"], backend=os.environ["MON_BACKEND"])
app.conf.update(broker_transport_options={"global_keyprefix": os.environ["MON_PREFIX"]},
                broker_connection_retry_on_startup=False, task_default_queue=os.environ["MON_QUEUE"],
                worker_hijack_root_logger=False)


@app.task(name="monproj.add")
def add(x, y):
    return x + y
'''

# The second client: sends by name, then prints the ids; it never waits for a result.
CLIENT = '''
import json, os, sys
from celery import Celery

app = Celery("plain-client", broker=os.environ["MON_BROKER"], backend=os.environ["MON_BACKEND"])
app.conf.broker_transport_options = {"global_keyprefix": os.environ["MON_PREFIX"]}
name, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = [app.send_task(name, args=(i, 1) if name == "monproj.add" else (f"text {i}",), queue=queue).id
       for i in range(count)]
print(json.dumps(ids))
'''


def run_client(env: dict[str, str], name: str, queue: str, count: int) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CLIENT, name, queue, str(count)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_cluster(monitor, env, *, worker: str, pool: str, concurrency: int, name: str, queue: str,
                  waiting: list[str], peek: bool) -> list[str]:
    """What every setup must show: the plain client's tasks, the waiting ones, unknown ids, the worker."""
    ran = run_client(env, name, queue, 4)
    wait_for(lambda: all((r := monitor.events.task(t)) and r.state == "SUCCESS" for t in ran), timeout=30,
             message="the plain client's tasks seen to SUCCESS through the worker's events")
    record = monitor.events.task(ran[0])
    assert record.name == name and record.worker == worker and record.received and record.started
    assert str(monitor.describe(ran[0])) == f"SUCCESS on {worker}"
    w = wait_for(lambda: next((w for w in monitor.workers() if w.hostname == worker and w.pool), None), timeout=20,
                 message="the worker's pool from inspect stats")
    assert (w.pool, w.concurrency, w.alive) == (pool, concurrency, True)
    assert w.heartbeat is not None
    unknown = monitor.describe(str(uuid.uuid4()))
    assert unknown.state == "unknown" and str(unknown).startswith("unknown")
    if peek:
        for position, task_id in enumerate(waiting, start=1):
            assert str(monitor.describe(task_id)) == f"queued (position {position} in {waiting_queue(monitor)!r})"
        assert wait_for(lambda: monitor.queues().get(waiting_queue(monitor)) == len(waiting), timeout=10)
        shown = monitor.events.waiting[waiting_queue(monitor)]
        assert [(w.task_id, w.position) for w in shown] == [(t, i) for i, t in enumerate(waiting, start=1)]
    else:  # AMQP: the depth is known, the messages cannot be read without consuming them
        assert wait_for(lambda: monitor.queues().get(waiting_queue(monitor)) == len(waiting), timeout=10)
        where = monitor.describe(waiting[0])
        assert where.state == "unknown" and "AMQP" in str(where)
    assert monitor.events.state_counts().get("SUCCESS", 0) >= len(ran)
    text = monitor.text()
    assert "SUCCESS" in text and f"{len(monitor.workers())} worker(s)" in text
    assert worker not in text and ran[0] not in text  # deterministic: no names, no ids
    html = monitor._repr_html_()
    assert worker in html and ran[0][:8] in html and waiting_queue(monitor) in html
    return ran


def waiting_queue(monitor) -> str:
    return monitor._waiting_queue


# -- the embedded server, celerynb's in-kernel worker ---------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    import celerynb
    from celerynb.workers import urls
    from celerynb.workers.celery_app import app

    cluster = celerynb.start(workers=1, concurrency=4)
    yield cluster
    celerynb.stop()
    urls.forget(app)


def test_embedded_monitor_sees_another_clients_tasks_queued_ones_and_progress(embedded):
    from conftest import registered

    from celerynb.display.cluster import ClusterMonitor
    from celerynb.workers.tasks import analyze_content

    env = dict(os.environ, MON_BROKER=embedded.broker_url, MON_BACKEND=embedded.app.conf.result_backend,
               MON_PREFIX="")
    queue = f"mon-waiting-{uuid.uuid4().hex[:8]}"
    waiting = run_client(env, "tasks.analyze_content", queue, 3)  # before the monitor: no worker reads it
    release = threading.Event()

    def halfway(self):
        self.update_state(state="PROGRESS", meta={"progress": 50})
        release.wait(20)
        return "done"

    with registered(embedded.app, halfway, "tests.monitor.halfway", bind=True) as task:
        result = task.delay()  # running before the monitor starts: its events are gone
        wait_for(lambda: result.state == "PROGRESS", timeout=15, message="the task to report progress")
        monitor = ClusterMonitor(embedded.app, rows=10)
        monitor._waiting_queue = queue
        try:
            worker = embedded.workers[0].hostname
            # Seen through the worker (inspect active), its PROGRESS meta from the result backend.
            row = wait_for(lambda: next((r for r in monitor._task_rows(0) if r["id"] == result.id
                                         and r["state"] == "PROGRESS"), None), timeout=15, message="PROGRESS row")
            assert row["percent"] == 50 and row["worker"] == worker and row["name"] == "tests.monitor.halfway"
            release.set()
            assert result.get(timeout=10) == "done"
            assert queue in monitor.events.queue_names()  # the broker knows it: no one told the monitor
            check_cluster(monitor, env, worker=worker, pool="threads", concurrency=4, name="tasks.analyze_content",
                          queue="default", waiting=waiting, peek=True)
            ours = analyze_content.delay("sent from here")
            wait_for(lambda: (r := monitor.events.task(ours.id)) and r.sent and r.queue == "default",
                     message="celerynb's app sends task-sent events")
        finally:
            release.set()
            monitor.stop()
    assert monitor.stopped and not monitor.events.running and "(stopped)" in monitor.text()
    before = monitor.events.counts["task-succeeded"]
    embedded.app.send_task("tasks.analyze_content", args=("after stop",), queue="default").get(timeout=10)
    assert monitor.events.counts["task-succeeded"] == before  # stopped means stopped


def test_monitor_magic_parses_and_delegates(embedded, tmp_path, monkeypatch):
    from IPython.core.error import UsageError
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    shell = new_shell()
    shell.run_line_magic("load_ext", "celerynb")
    try:
        with pytest.raises(UsageError, match="--rows"):
            shell.run_line_magic("celery", "monitor --rows 0")
        with pytest.raises(UsageError, match="not a whole number"):
            shell.run_line_magic("celery", "monitor --rows many")
        monitor = shell.run_line_magic("celery", "monitor --rows 3 --queues a,b --no-enable-events")
        try:
            assert monitor.rows == 3 and not monitor.events.enable_events
            assert {"a", "b"} <= set(monitor.events.queue_names())
        finally:
            monitor.stop()
    finally:
        shell.run_line_magic("unload_ext", "celerynb")
        TerminalInteractiveShell.clear_instance()


def test_a_broken_tab_is_a_line_and_a_tab_gets_the_records(embedded):
    from celerynb.display.cluster import ClusterMonitor

    monitor = ClusterMonitor(embedded.app)  # the embedded cluster's workers send task events when asked
    try:
        result = embedded.app.send_task("tasks.analyze_content", args=("<script>x</script>",))
        result.get(timeout=10)
        wait_for(lambda: monitor.events.task(result.id) and monitor.events.task(result.id).state == "SUCCESS")
        seen = []
        monitor.add_tab("Timeline", lambda records: seen.append(records) or "<svg id='lane'></svg>")
        monitor.add_tab("Broken", lambda records: 1 / 0)
        html = monitor._repr_html_()
        assert "<svg id='lane'></svg>" in html and "Broken failed: ZeroDivisionError" in html
        assert any(r.task_id == result.id and r.worker and r.started and r.ended for r in seen[0])
        assert "<script>x</script>" not in html  # user data is escaped
    finally:
        monitor.stop()


def test_the_monitor_has_a_timeline_of_the_tasks_its_events_told(embedded):
    from celerynb.display.cluster import ClusterMonitor

    monitor = ClusterMonitor(embedded.app)
    try:
        results = [embedded.app.send_task("tasks.analyze_content", args=(f"word {i}",)) for i in range(4)]
        for result in results:
            result.get(timeout=10)
        wait_for(lambda: all((r := monitor.events.task(x.id)) and r.ended for x in results), message="4 ended")
        monitor.stop()  # the last drawing has every task
        html = monitor._repr_html_()
        assert "Timeline" in html and "data:image/svg+xml;base64," in html and "4 tasks" in html, html[-3000:]
    finally:
        monitor.stop()


def test_event_records_are_packed_into_one_lane_per_task_running_at_once():
    from celerynb.tracking.cluster_events import TaskRecord
    from celerynb.tracking.timing import from_event_records

    def record(tid: str, worker: str, started: float | None, ended: float | None) -> TaskRecord:
        return TaskRecord(tid, "t", "SUCCESS" if ended else "STARTED", worker, "q", None, None, started, ended,
                          None, None, None, None, None)

    timings = {t.task_id: t for t in from_event_records([
        record("a", "w1", 0.0, 2.0), record("b", "w1", 1.0, 3.0), record("c", "w1", 2.5, 4.0),
        record("d", "w2", 1.0, None), record("e", "w2", 1.5, 2.0), record("queued", "w2", None, None)])}
    assert [timings[t].slot for t in "abcde"] == ["lane 1", "lane 2", "lane 1", "lane 1", "lane 2"]
    assert timings["d"].ended is None and not timings["queued"].timed


# -- the machine's Redis and RabbitMQ, a plain `celery worker -E` process ------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("monproj")
    (root / "monproj.py").write_text(textwrap.dedent(PROJECT))
    return root


def start_worker(project: Path, env: dict[str, str], hostname: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "monproj", "worker", "-E", "-P", "threads", "-c", "2",
           "-Q", env["MON_QUEUE"], "-n", hostname, "--without-mingle", "--without-gossip", "-l", "WARNING"]
    return subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.external
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_external_monitor_sees_another_clients_tasks_and_queued_ones(project, broker):
    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
    if broker == "rabbitmq" and not reachable("127.0.0.1", 5672):
        pytest.skip("RabbitMQ on 127.0.0.1:5672 is not reachable")
    tag = uuid.uuid4().hex[:8]
    backend = REDIS_URL.format(db=11)
    env = dict(os.environ, MON_BROKER=backend if broker == "redis" else RABBITMQ_URL, MON_BACKEND=backend,
               MON_PREFIX=f"mon-{tag}:" if broker == "redis" else "", MON_QUEUE=f"mon-run-{tag}",
               PYTHONPATH=str(project))
    queue = f"mon-waiting-{tag}"
    _external_run(project, broker, env, backend, tag, queue)


def _external_run(project, broker, env, backend, tag, queue) -> None:
    from celery import Celery

    from celerynb.display.cluster import ClusterMonitor

    waiting = run_client(env, "monproj.add", queue, 3)
    app = Celery(f"mon-{tag}", broker=env["MON_BROKER"], backend=backend, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": env["MON_PREFIX"]}
    app.conf.broker_connection_retry_on_startup = False
    hostname = f"mon-{tag}@test"
    proc = start_worker(project, env, hostname)
    # No enable_events broadcast: on the shared RabbitMQ it would reach other people's workers.
    monitor = ClusterMonitor(app, queues=[queue], enable_events=False)
    monitor._waiting_queue = queue
    ran: list[str] = []
    try:
        ran = check_cluster(monitor, env, worker=hostname, pool="threads", concurrency=2, name="monproj.add",
                            queue=env["MON_QUEUE"], waiting=waiting, peek=broker == "redis")
    finally:
        monitor.stop()
        stop_worker(proc)
        with app.connection_for_write() as conn:
            for name in (queue, env["MON_QUEUE"]):
                try:
                    conn.default_channel.queue_delete(name)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        _remove_own_keys(backend, env["MON_PREFIX"], ran)
        app.close()


def _remove_own_keys(url: str, prefix: str, task_ids: list[str]) -> None:
    """Exactly our keys on the shared server: the prefixed broker keys and our tasks' results."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000)) if prefix else []
        keys += [f"celery-task-meta-{t}" for t in task_ids]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- `celerynb up`'s worker processes: visible to Celery's own tools ---------------------------------


def test_worker_processes_celerynb_starts_send_task_events_when_asked_and_only_then(embedded):
    """``celerynb up`` and ``processes=N`` start this same command: before, ``enable_events`` answered
    "event dispatcher unavailable" and ``celery events`` saw nothing. Now heartbeats are on, task
    events off (a publish each on the hot path) until ``enable_events``; a monitor turns off at its
    end only what it turned on."""
    from celerynb.cluster.processes import WorkerProcess
    from celerynb.tracking.cluster_events import ClusterEvents
    from celerynb.tracking.event_switch import EventSwitch

    queue = f"mon-proc-{uuid.uuid4().hex[:8]}"
    proc = WorkerProcess(app_path="celerynb.workers.celery_app", broker_url=embedded.broker_url,
                         result_backend=embedded.app.conf.result_backend, name=f"{queue}@test", queues=[queue],
                         extra_env={"CELERYNB_CAPTURE_LOGS": "0"})
    events = None
    try:
        events = ClusterEvents(embedded.app, enable_events=False).start()
        proc.start(embedded.app)
        wait_for(lambda: any(w.hostname == proc.name and w.heartbeat for w in events.workers()), timeout=15,
                 message="its heartbeats")

        def run(text: str) -> str:
            result = embedded.app.send_task("tasks.analyze_content", args=(text,), queue=queue)
            assert result.get(timeout=20)["words"] == len(text.split())
            return result.id

        quiet = run("no events yet")
        switch = EventSwitch(embedded.app)
        switch.enable_workers(timeout=2)
        assert proc.name in switch.enabled_by_us
        seen = run("seen by celery events")
        wait_for(lambda: (r := events.task(seen)) and r.state == "SUCCESS" and r.worker == proc.name,
                 timeout=15, message="task events of a worker process")
        assert events.task(quiet) is None or events.task(quiet).state != "SUCCESS"
        switch.off()  # it turned them on: it turns them off
        replies = embedded.app.control.broadcast("enable_events", reply=True, timeout=2, destination=[proc.name])
        assert replies == [{proc.name: {"ok": "task events enabled"}}], replies
    finally:
        if events is not None:
            events.stop()
        proc.stop()


def test_the_app_sends_task_sent_events_only_while_a_monitor_runs(embedded):
    from celerynb.tracking.cluster_events import ClusterEvents

    queue = f"mon-sent-{uuid.uuid4().hex[:8]}"  # no worker: tasks only ever sent
    listener = ClusterEvents(embedded.app, enable_events=False)
    watching = ClusterEvents(embedded.app, enable_events=False)
    listener.start()  # a monitor: from now on the app says task-sent
    try:
        first = embedded.app.send_task("tasks.analyze_content", args=("x",), queue=queue)
        wait_for(lambda: (r := listener.task(first.id)) and r.sent, message="task-sent while watched")
        watching.start()
        watching.stop()  # one monitor ends, another still runs: still on
        second = embedded.app.send_task("tasks.analyze_content", args=("x",), queue=queue)
        wait_for(lambda: (r := listener.task(second.id)) and r.sent, message="task-sent while still watched")
    finally:
        listener.stop()
    receiver = ClusterEvents(embedded.app, enable_events=False)
    receiver._switch.on = lambda: None  # a listener that leaves the app as it is: what does it say now?
    receiver.start()
    try:
        unseen = embedded.app.send_task("tasks.analyze_content", args=("x",), queue=queue)
        probe = embedded.app.send_task("tasks.analyze_content", args=("x",), queue=queue)
        with embedded.app.events.default_dispatcher() as dispatcher:
            dispatcher.send("task-sent", uuid=probe.id, name="probe", queue=queue)
        wait_for(lambda: receiver.task(probe.id), message="a later event")
        assert receiver.task(unseen.id) is None or not receiver.task(unseen.id).sent
    finally:
        receiver.stop()
