"""Watching many tasks costs what changed, not what is tracked; memory stays bounded; waiting
on a mapped group is pushed. Real embedded server (and the machine's Redis where reachable)."""

from __future__ import annotations

import uuid

import pytest
import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from conftest import wait_for

import celerynb
from celerynb.display import _views
from celerynb.display.text import TextProgress
from celerynb.tracking import monitor as monitor_module
from celerynb.tracking.monitor import TaskSnapshot, get_monitor
from celerynb.tracking.retention import BIG_RESULT


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


class Work:
    """Counts the per-task work of a display: snapshot reads and task views built."""

    def __init__(self, monitor_obj, monkeypatch) -> None:
        self.calls = 0
        snapshot, task_view = monitor_obj.snapshot, _views.task_view

        def counted_snapshot(*args, **kwargs):
            self.calls += 1
            return snapshot(*args, **kwargs)

        def counted_view(*args, **kwargs):
            self.calls += 1
            return task_view(*args, **kwargs)

        monkeypatch.setattr(monitor_obj, "snapshot", counted_snapshot)
        monkeypatch.setattr(_views, "task_view", counted_view)
        import celerynb.display._base as base
        import celerynb.display.tally as tally

        monkeypatch.setattr(tally._views, "task_view", counted_view)
        monkeypatch.setattr(base._views, "task_view", counted_view)


def _work_of_one_update(app, n: int, monkeypatch) -> int:
    monitor = get_monitor(app)
    ids = _ids(n)
    display = TextProgress(ids, app)
    try:
        with monkeypatch.context() as patch:
            work = Work(monitor, patch)
            monitor._apply(TaskSnapshot(task_id=ids[n // 2], state="SUCCESS", info=1), b"one")
            display.refresh()
            return work.calls
    finally:
        display.close()


def test_one_update_and_redraw_cost_the_same_at_1k_and_20k_tasks(cluster, monkeypatch):
    small = _work_of_one_update(cluster.app, 1_000, monkeypatch)
    large = _work_of_one_update(cluster.app, 20_000, monkeypatch)
    assert large == small and small <= 5, (small, large)


def test_aggregate_counts_follow_every_change(cluster):
    app = cluster.app
    monitor = get_monitor(app)
    ids = _ids(50)
    display = TextProgress(ids, app)
    try:
        for tid in ids[:10]:
            monitor._apply(TaskSnapshot(task_id=tid, state="STARTED"), f"s{tid}".encode())
        for tid in ids[:7]:
            monitor._apply(TaskSnapshot(task_id=tid, state="SUCCESS", info=1), f"d{tid}".encode())
        monitor._apply(TaskSnapshot(task_id=ids[7], state="FAILURE",
                                    info={"exc_type": "ValueError", "exc_message": ["bad"]}), b"f")
        _, group = display.views()
        assert (group.done, group.total) == (8, 50)
        assert group.counts == {"PENDING": 40, "STARTED": 2, "SUCCESS": 7, "FAILURE": 1}
        assert [v.error for v in group.failures] == ["ValueError: bad"]
    finally:
        display.close()


def test_finished_tasks_nobody_needs_are_forgotten_and_read_again(cluster, monkeypatch):
    app = cluster.app
    monitor = get_monitor(app)
    monkeypatch.setattr(monitor._finished, "keep", 20)
    ids = _ids(200)
    for i, tid in enumerate(ids):
        app.backend.store_result(tid, i, "SUCCESS")
    snapshots = monitor.wait(ids, timeout=30)
    assert [snapshots[t].info for t in ids] == list(range(200))  # a waiter keeps what it waits for
    remembered = sum(1 for t in ids if t in monitor._snapshots)
    assert remembered <= 20
    assert monitor.full_snapshot(ids[0]).info == 0  # forgotten: read again from the backend


def test_big_result_is_dropped_once_nothing_needs_it(cluster):
    app = cluster.app
    monitor = get_monitor(app)
    tid = str(uuid.uuid4())
    big = "x" * (BIG_RESULT * 2)
    app.backend.store_result(tid, big, "SUCCESS")
    assert monitor.wait([tid], timeout=30)[tid].info == big
    kept = monitor.snapshot(tid)
    assert kept.state == "SUCCESS" and kept.trimmed and kept.info is None
    assert monitor.full_snapshot(tid).info == big


def test_first_state_arrives_after_thousands_of_subscriptions_in_a_few_turns(redis7_url):
    app = Celery(f"scale-{uuid.uuid4().hex[:8]}", broker=redis7_url, backend=redis7_url)
    monitor = get_monitor(app)
    try:
        ids = _ids(3_000)
        monitor.track(ids)
        wait_for(lambda: monitor.listening(ids[-1]), timeout=30, message="subscribed")
        turns = monitor.stats["listens"]
        app.backend.store_result(ids[-1], "done", "SUCCESS")
        monitor.wait([ids[-1]], timeout=30)
        assert monitor.stats["listens"] - turns < 20  # was one turn per confirmation: 3,000
    finally:
        monitor.stop()
        monitor_module.forget_monitors()


def test_mapped_group_get_waits_on_pushed_states_in_order(cluster):
    from celerynb.workers.tasks import analyze_content

    admin = redis.Redis.from_url(cluster.app.conf.broker_url)
    try:
        celerynb.map(analyze_content, ["warm"] * 40).get(timeout=60)  # the monitor connected, subscribed once
        before = admin.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0)
        result = celerynb.map(analyze_content, [" ".join(["word"] * (1 + i % 7)) for i in range(300)])
        values = result.get(timeout=60)
        after = admin.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0)
    finally:
        admin.close()
    assert [v["words"] for v in values] == [1 + i % 7 for i in range(300)]
    assert after - before == 0  # no SUBSCRIBE per task: the monitor's states are pushed already


def test_mapped_group_get_raises_the_first_failure_in_order(cluster):
    from celerynb.workers.tasks import process_document

    result = celerynb.map(process_document, [("missing-doc", {"format": "nope"})] + [("doc", {})] * 3)
    with pytest.raises(ValueError, match="Unknown format 'nope'"):
        result.get(timeout=60)
    values = result.get(timeout=60, propagate=False)
    assert isinstance(values[0], ValueError) and len(values) == 4


def test_mapped_group_get_times_out_as_celery_does(app):
    from celerynb.workers.tasks import analyze_content

    with celerynb.LocalCluster(app, workers=0):
        result = celerynb.map(analyze_content, ["never runs"])
        with pytest.raises(CeleryTimeoutError):
            result.get(timeout=0.3)
