"""The shared task monitor against a real embedded server and an in-kernel worker."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
from conftest import command_calls, commands_sent, wait_for

from celerynb.tracking.monitor import TaskSnapshot, get_monitor


@pytest.fixture
def monitor(cluster):
    mon = get_monitor(cluster.app)
    yield mon


def test_one_monitor_per_app(cluster):
    assert get_monitor(cluster.app) is get_monitor(cluster.app)
    assert get_monitor() is get_monitor(cluster.app)


def test_progress_is_pushed_then_success(monitor):
    from celerynb.workers.tasks import long_process

    seen: list[TaskSnapshot] = []
    result = long_process.delay(list(range(5)), delay=0.05)
    remove = monitor.add_listener(seen.append, [result.id])
    monitor.track([result.id])
    snaps = monitor.wait([result.id], timeout=20)
    remove()
    final = snaps[result.id]
    assert final.state == "SUCCESS" and final.ready
    assert final.info == {"status": "completed", "processed": 5}
    assert final.name == "tasks.long_process" and final.worker
    progress = [s.info["progress"] for s in seen if s.state == "PROGRESS"]
    assert progress, "no PROGRESS update reached the listener"
    assert progress == sorted(progress) and progress[-1] <= 100
    assert monitor.mode == "redis"


def test_failure_snapshot_carries_exception(monitor):
    from celerynb.workers.tasks import risky_task

    result = risky_task.delay("fail")
    snap = monitor.wait([result.id], timeout=20)[result.id]
    assert snap.state == "FAILURE"
    assert snap.info["exc_type"] == "PermanentError"
    assert "cannot process" in str(snap.info["exc_message"])


def test_unknown_task_stays_pending_and_wait_times_out(monitor):
    tid = str(uuid.uuid4())
    monitor.track([tid])
    assert monitor.snapshot(tid).state == "PENDING"
    with pytest.raises(TimeoutError, match="1 of 1"):
        monitor.wait([tid], timeout=0.3)


def test_state_written_before_tracking_is_read_once(cluster, monitor):
    tid = str(uuid.uuid4())
    cluster.app.backend.store_result(tid, {"n": 1}, "SUCCESS")
    monitor.track([tid])
    snap = wait_for(lambda: monitor.snapshot(tid).ready and monitor.snapshot(tid), message="initial read")
    assert snap.info == {"n": 1}


def test_many_tasks_one_thread_few_commands(cluster, monitor):
    from celerynb.workers.tasks import analyze_content

    n = 200
    results = [analyze_content.delay(f"text number {i}") for i in range(n)]
    keys_before = monitor.stats["mget_keys"]
    sweeps_before = monitor.stats["reconciles"]
    # The embedded server is private to this session: every command it counts is ours.
    before = command_calls(cluster.broker_url)
    snaps = monitor.wait([r.id for r in results], timeout=60)
    sent = commands_sent(before, command_calls(cluster.broker_url))
    sweeps = monitor.stats["reconciles"] - sweeps_before
    assert all(s.state == "SUCCESS" for s in snaps.values())
    monitors = [t for t in threading.enumerate() if t.name.startswith("celerynb-monitor-celerynb")]
    assert len(monitors) == 1, monitors
    # States are pushed: the server read no task key on its own (a GET per task would be n
    # GETs), and the monitor's reads were one batched MGET over the new ids plus at most one
    # per reconcile sweep, however many tasks (a poll per task would be n MGETs or more).
    assert sent.get("get", 0) == 0, sent
    assert 1 <= sent.get("mget", 0) <= 1 + sweeps, (sent, sweeps)
    assert monitor.stats["mget_keys"] - keys_before <= n * (1 + sweeps)
    assert not {r.id for r in results} & monitor._unfinished


def test_finished_state_is_never_overwritten(monitor):
    tid = str(uuid.uuid4())
    monitor.track([tid])
    monitor._apply(TaskSnapshot(task_id=tid, state="SUCCESS", info=1), b"a")
    monitor._apply(TaskSnapshot(task_id=tid, state="PROGRESS", info={"progress": 5}), b"b")
    assert monitor.snapshot(tid).state == "SUCCESS"


def test_survives_pubsub_connection_kill(cluster, monitor):
    tid = str(uuid.uuid4())
    monitor.track([tid])
    wait_for(lambda: monitor.mode == "redis" and monitor.listening(tid), message="subscribed")
    admin = redis.Redis.from_url(cluster.broker_url)
    admin.client_kill_filter(_type="pubsub")
    admin.close()
    cluster.app.backend.store_result(tid, "after", "SUCCESS")
    snap = monitor.wait([tid], timeout=20)[tid]
    assert snap.info == "after"


def test_survives_server_restart(cluster, monitor):
    tid = str(uuid.uuid4())
    monitor.track([tid])
    wait_for(lambda: monitor.listening(tid), message="subscribed")
    reconnects = monitor.stats["reconnects"]
    cluster.server.stop()
    cluster.server.start()
    wait_for(lambda: monitor.stats["reconnects"] > reconnects, timeout=15, message="monitor noticed the restart")
    cluster.app.backend.store_result(tid, "restarted", "SUCCESS")
    snap = monitor.wait([tid], timeout=20)[tid]
    assert snap.state == "SUCCESS" and snap.info == "restarted"


def test_cache_backend_is_polled(app):
    """A non-Redis backend: batched polling from the same single thread."""
    from celery import Celery

    other = Celery("polled", broker="memory://", backend="cache+memory://")
    mon = get_monitor(other)
    tid = str(uuid.uuid4())
    mon.track([tid])
    other.backend.store_result(tid, 7, "SUCCESS")
    snap = mon.wait([tid], timeout=10)[tid]
    assert mon.mode == "poll" and snap.info == 7
    mon.stop()


def test_tasks_of_a_stopped_cluster_end_lost_instead_of_being_swept_forever(app):
    """A cluster stopped with tasks still queued: once the app uses a new server, those tasks can
    never be followed; they end LOST (and leave the reconcile sweep) instead of staying PENDING."""
    import celerynb
    from celerynb.tracking.snapshot import LOST, MOVED_INFO
    from celerynb.workers.tasks import analyze_content

    first = celerynb.start(workers=1, queues=["default"])
    stranded = analyze_content.apply_async(("never runs",), queue="nobody-consumes-this")
    mon = get_monitor(app)
    mon.track([stranded.id])
    first.stop()
    celerynb.start()
    fresh = analyze_content.delay("runs on the new cluster")
    snaps = mon.wait([stranded.id, fresh.id], timeout=30)
    assert snaps[fresh.id].state == "SUCCESS"
    assert snaps[stranded.id].state == LOST and snaps[stranded.id].info == MOVED_INFO
    assert stranded.id not in mon._unfinished


def _monitor_threads(app) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"celerynb-monitor-{app.main}" and t.is_alive()]


def test_the_thread_ends_when_nothing_is_followed_and_comes_back_for_new_tasks(monitor, monkeypatch):
    from celerynb.tracking import loop
    from celerynb.workers.tasks import analyze_content

    monkeypatch.setattr(loop, "IDLE_EXIT", 0.1)
    first = analyze_content.delay("a b a")
    assert monitor.wait([first.id], timeout=30)[first.id].state == "SUCCESS"
    wait_for(lambda: not _monitor_threads(monitor.app), timeout=10, message="the idle monitor thread to end")
    second = analyze_content.delay("c d c")
    assert monitor.wait([second.id], timeout=30)[second.id].state == "SUCCESS"  # a fresh thread follows it
    assert len(_monitor_threads(monitor.app)) <= 1


def test_a_stop_that_timed_out_never_leaves_two_threads(monitor):
    from celerynb.workers.tasks import generate_report

    busy = generate_report.apply_async(countdown=600)  # keeps something to follow
    monitor.track([busy.id])
    wait_for(lambda: monitor.connected, timeout=10, message="the monitor to connect")
    monitor.stop(timeout=0)  # returns at once: the old thread may still be running
    later = generate_report.apply_async(countdown=600)
    monitor.track([later.id])  # starts another
    wait_for(lambda: len(_monitor_threads(monitor.app)) == 1, timeout=10, message="a single monitor thread")
    busy.revoke()
    later.revoke()
