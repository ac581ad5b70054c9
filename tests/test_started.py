"""STARTED is written for tasks that run long enough to be seen running, and never for the
others (celerynb.workers.started): on in-kernel workers and on a worker process."""

from __future__ import annotations

import time

import pytest
import redis
from conftest import registered

import celerynb
from celerynb.workers import started, tasks
from celerynb.workers.celery_app import app as celerynb_app


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _report_then_nap(self, seconds: float) -> float:
    self.update_state(state="PROGRESS", meta={"progress": 10})
    time.sleep(seconds)
    return seconds


def _tracked() -> int:
    return 1


@pytest.fixture(scope="module")
def nap():
    with registered(celerynb_app, _nap, "tests.started.nap") as task:
        yield task


@pytest.fixture(scope="module")
def report_then_nap():
    with registered(celerynb_app, _report_then_nap, "tests.started.report_then_nap", bind=True) as task:
        yield task


@pytest.fixture(scope="module")
def tracked():
    with registered(celerynb_app, _tracked, "tests.started.tracked", track_started=True) as task:
        yield task


class StateLog:
    """Every state the backend PUBLISHes for the tasks subscribed, in order (a real pub/sub)."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = redis.Redis.from_url(app.conf.result_backend)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)

    def follow(self, task_id: str) -> None:
        self.pubsub.subscribe(self.app.backend.get_key_for_task(task_id))
        self.pubsub.get_message(timeout=1.0)  # the confirmation: subscribed before the task runs

    def states(self, until: str, timeout: float = 30.0) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while until not in seen and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if message is not None:
                seen.append(self.app.backend.decode(message["data"])["status"])
        return seen

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def log(cluster):
    states = StateLog(cluster.app)
    yield states
    states.close()


def _prepared(task, *args):
    """An id to subscribe to first, and the call that sends the task under it."""
    from celery.utils import uuid

    task_id = uuid()
    return task_id, lambda: task.apply_async(args, task_id=task_id)


def test_quick_task_goes_from_pending_to_success_without_started(cluster, log, nap):
    task_id, send = _prepared(nap, 0.0)
    log.follow(task_id)
    send()
    assert log.states("SUCCESS") == ["SUCCESS"]


def test_task_running_longer_reports_started_with_its_worker(cluster, log, nap):
    task_id, send = _prepared(nap, started.STARTED_AFTER * 6)
    log.follow(task_id)
    send()
    assert log.states("SUCCESS") == ["STARTED", "SUCCESS"]


def test_own_progress_report_is_never_overwritten_by_a_late_started(cluster, log, report_then_nap):
    # PROGRESS at once, then running well past STARTED_AFTER: a STARTED must not follow it.
    task_id, send = _prepared(report_then_nap, started.STARTED_AFTER * 4)
    log.follow(task_id)
    send()
    assert log.states("SUCCESS") == ["PROGRESS", "SUCCESS"]


def test_worker_process_defers_started_too(app):
    with celerynb.LocalCluster(app, workers=0, processes=1) as local:
        log = StateLog(local.app)
        try:
            quick_id, send_quick = _prepared(tasks.analyze_content, "a few words")
            log.follow(quick_id)
            send_quick()
            assert log.states("SUCCESS", timeout=60) == ["SUCCESS"]
            slow_id, send_slow = _prepared(tasks.long_process, [0], started.STARTED_AFTER * 6)
            log.follow(slow_id)
            send_slow()
            assert log.states("SUCCESS", timeout=60) == ["STARTED", "PROGRESS", "SUCCESS"]
        finally:
            log.close()


def test_explicit_track_started_keeps_celerys_immediate_write(cluster, log, tracked):
    task_id, send = _prepared(tracked)
    log.follow(task_id)
    send()
    assert log.states("SUCCESS") == ["STARTED", "SUCCESS"]


class _CountingCondition:
    """A real ``threading.Condition`` that counts the waits of the reporter's thread."""

    def __init__(self) -> None:
        import threading

        self._cond = threading.Condition()
        self.waits = 0

    def __enter__(self):
        return self._cond.__enter__()

    def __exit__(self, *exc):
        return self._cond.__exit__(*exc)

    def wait(self, timeout=None):
        self.waits += 1
        return self._cond.wait(timeout)

    def notify(self, n=1):
        self._cond.notify(n)


class _Stored:
    """What ``StartedReporter._write`` needs of a task: its backend, here a list of what was stored."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.backend = self

    def store_result(self, task_id, result, state, request=None):
        self.states.append((task_id, state))


def test_the_reporter_thread_does_not_wake_once_per_task_and_still_writes_after_dozing():
    from types import SimpleNamespace

    reporter = started.StartedReporter(after=0.05)
    reporter.IDLE_AFTER = 0.3
    reporter._cond = cond = _CountingCondition()
    task = _Stored()
    for i in range(300):  # quick tasks, one after the other: none is seen running
        request = SimpleNamespace(id=f"quick-{i}", hostname="h")
        reporter.schedule(task, request)
        time.sleep(0.001)  # the task's body
        reporter.cancel(request.id)
    assert task.states == []
    assert cond.waits < 100, cond.waits  # one per 50 ms at most, not one per task (300)

    deadline = time.monotonic() + 10
    while not reporter._dozing:  # no task for IDLE_AFTER: it sleeps until the next one
        assert time.monotonic() < deadline, "the reporter never went to sleep"
        time.sleep(0.01)
    reporter.schedule(task, SimpleNamespace(id="long", hostname="h"))  # wakes it
    while not task.states:
        assert time.monotonic() < deadline, "no STARTED for a task scheduled after the reporter slept"
        time.sleep(0.01)
    assert task.states == [("long", "STARTED")]
