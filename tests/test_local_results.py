"""A task the kernel's own workers run is handed to the kernel's ``.get()`` in the process
(celerynb.workers.local_results), with Celery's behaviour kept where that cannot be done."""

from __future__ import annotations

import uuid

import pytest
from conftest import command_calls, commands_sent, registered

import celerynb
from celerynb.workers import local_results
from celerynb.workers.celery_app import app as celerynb_app


def _echo(value):
    return value


def _fails():
    raise ValueError("told to fail")


@pytest.fixture(scope="module")
def echo():
    with registered(celerynb_app, _echo, "tests.local_results.echo") as task:
        yield task


@pytest.fixture(scope="module")
def fails():
    with registered(celerynb_app, _fails, "tests.local_results.fails") as task:
        yield task


def test_the_default_cluster_round_trip_needs_no_subscription_and_no_read(cluster, echo):
    url = cluster.app.conf.result_backend
    echo.delay(0).get(timeout=30)  # warm: connections
    before = command_calls(url)
    assert [echo.delay(i).get(timeout=30) for i in range(20)] == list(range(20))
    sent = commands_sent(before, command_calls(url))
    assert sent.get("lpush") == 20  # the tasks did go through the broker
    assert not {"subscribe", "unsubscribe", "get"} & set(sent), sent  # Celery: 20 of each


def test_a_failure_is_raised_with_the_tasks_own_frames(cluster, fails):
    result = fails.delay()
    with pytest.raises(ValueError, match="told to fail") as err:
        result.get(timeout=30)
    (note,) = err.value.__notes__
    assert note.startswith("Raised in tests.local_results.fails") and "_fails" in note
    assert result.get(timeout=30, propagate=False).args == ("told to fail",)  # and again, from its cache


def test_a_result_stored_by_another_process_is_read_within_a_second(cluster, echo):
    """Sent as served here, but stored elsewhere (no PUBLISH, no hand-over): the waiter reads it."""
    import redis

    task_id = f"elsewhere-{uuid.uuid4()}"
    local_results.expect(task_id)
    result = echo.AsyncResult(task_id)
    assert isinstance(result, local_results.ServedResult)
    backend = cluster.app.backend
    meta = {"status": "SUCCESS", "result": "from elsewhere", "traceback": None, "children": [], "task_id": task_id}
    client = redis.Redis.from_url(cluster.app.conf.result_backend)
    try:
        client.set(backend.get_key_for_task(task_id), backend.encode(meta), ex=60)
        assert result.get(timeout=30) == "from elsewhere"
    finally:
        client.delete(backend.get_key_for_task(task_id))
        client.close()


def test_a_large_result_and_a_timeout_behave_as_in_celery(cluster, echo):
    from celery.exceptions import TimeoutError as ResultTimeout

    big = "x" * (local_results.MAX_KEPT + 1)  # not kept in the process: read from the backend
    assert echo.delay(big).get(timeout=30) == big
    never = echo.apply_async((1,), queue=f"nobody-consumes-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ResultTimeout):
        never.get(timeout=0.5)


def test_expectations_are_bounded_and_end_with_the_cluster(monkeypatch, cluster, echo):
    monkeypatch.setattr(local_results, "MAX_EXPECTED", 5)
    sent = [echo.apply_async((i,), queue=f"nobody-consumes-{uuid.uuid4().hex[:8]}") for i in range(8)]
    assert [local_results.expected(r.id) for r in sent] == [False] * 3 + [True] * 5  # oldest dropped
    celerynb.stop()
    assert not any(local_results.expected(r.id) for r in sent)
    assert not local_results.serving(celerynb_app)


def test_with_worker_processes_results_come_the_way_celery_sends_them(app):
    from celerynb.workers.tasks import analyze_content

    cluster = celerynb.start(processes=1, workers=0)
    assert not local_results.serving(app)
    result = analyze_content.delay("via a worker process")
    assert not isinstance(result, local_results.ServedResult)
    assert result.get(timeout=60)["words"] == 4
    cluster.stop()


def _retry_once(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0.2, max_retries=2)
    return self.request.retries


def test_a_retried_task_is_handed_over_on_its_last_attempt(cluster):
    """The retry sends the same id again: the waiting ``.get()`` keeps its slot (no read after a second)."""
    url = cluster.app.conf.result_backend
    with registered(celerynb_app, _retry_once, "tests.local_results.retry_once", bind=True) as task:
        before = command_calls(url)
        assert task.delay().get(timeout=30) == 1
        assert commands_sent(before, command_calls(url)).get("get", 0) == 0  # its own read: a GET
