"""The predefined tasks end to end: in-process workers and a discovered ``celerynb up`` worker."""

from __future__ import annotations

import time

import _e2e
import pytest
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError

import celerynb
from celerynb.workers import tasks, urls
from celerynb.workers.base import ArgumentNotSerializable


# -- in-process workers (embedded server, started on demand) ----------------------------------
def test_every_predefined_task_in_process(cluster):
    _e2e.check_every_task()
    assert celerynb.current() is cluster and cluster.source == "embedded"


def test_retries_with_backoff_and_permanent_failure(cluster):
    _e2e.check_retries()


def test_countdown_is_respected(cluster):
    _e2e.check_countdown()


def test_expired_task_ends_revoked(cluster):
    _e2e.check_expires_before_countdown()


def test_expired_while_queued_behind_busy_solo_worker(app):
    """The realistic case: the task expires while it waits for a busy worker."""
    with celerynb.LocalCluster(app, pool="solo") as local:
        busy = tasks.long_process.delay([0] * 6, delay=0.1)
        _wait_state(busy, {"STARTED", "PROGRESS"})
        late = tasks.analyze_content.apply_async(("too late",), expires=0.2)
        assert busy.get(timeout=30)["processed"] == 6
        with pytest.raises(TaskRevokedError):
            late.get(timeout=30)
        assert late.state == "REVOKED"
        assert local.workers[0].pool == "solo"


def test_progress_states_observed(cluster):
    _e2e.check_progress()


def test_high_priority_queue_is_consumed(cluster):
    consumer = cluster.workers[0].controller.consumer
    consuming = sorted(q.name for q in consumer.task_consumer.queues)
    # Also any queue that tasks of this process were sent to: those are the app's queues too.
    assert {"default", "high-priority"} <= set(consuming)
    result = tasks.analyze_content.apply_async(("urgent words",), queue="high-priority")
    try:
        output = result.get(timeout=30)
    except CeleryTimeoutError:
        pytest.fail(f"not run: state {result.state}, queues {cluster.status()['queues']}, "
                    f"workers {cluster.status()['workers']}, consuming {consuming}")
    assert output["words"] == 2 and result.queue == "high-priority"


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: tasks.process_document.delay("doc1", {"format": "json", "when": object()}), "'options'"),
        (lambda: tasks.analyze_content.delay(content={1, 2}), "'content'"),
        (lambda: tasks.long_process.delay([1], delay=object()), "'delay'"),
    ],
)
def test_non_json_argument_is_refused_at_submit_naming_it(cluster, call, named):
    with pytest.raises(ArgumentNotSerializable) as info:
        call()
    message = str(info.value)
    assert named in message and "JSON" in message and "Pass plain data" in message
    assert "\n" not in message


def _wait_state(result, states: set[str], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := result.state) not in states:
        assert time.monotonic() < deadline, f"task stayed {state}, expected one of {states}"
        time.sleep(0.02)
    return state


# -- a separate `celery worker` process, found through `celerynb up` discovery ----------------
@pytest.fixture
def discovered_app(app, discovery_cluster):
    """celerynb's app re-resolved with no env var and no local cluster: it must find ``up``."""
    celerynb.stop()
    urls.forget(app)
    urls.resolve_into(app)
    yield app
    urls.forget(app)


def test_discovered_worker_process_runs_every_task(discovered_app, discovery_cluster):
    assert urls.source_of(discovered_app) == "discovery"
    assert discovered_app.conf.broker_url == discovery_cluster["url"]
    _e2e.check_everything()
    # No worker of this process took part: only the `celerynb up` worker process.
    assert celerynb.current() is None
    worker_names = {w["name"] for w in discovery_cluster["workers"]}
    replies = discovered_app.control.ping(timeout=1.0)
    assert {name for reply in replies for name in reply} == worker_names
    result = tasks.analyze_content.delay("who ran me")
    result.get(timeout=30)
    assert result.worker in worker_names


# -- concurrent calls for one document (issue 16) ---------------------------------------------
def _fifty_documents_in_parallel() -> None:
    """50 ``process_document`` calls over doc1-doc3 at once: each must succeed, and every
    saved output must be whole JSON (no call may see another's temporary file vanish)."""
    import json

    from celery import group

    from celerynb.workers import documents

    calls = [tasks.process_document.s(f"doc{1 + i % 3}", {"format": "markdown"}) for i in range(50)]
    outputs = group(calls).apply_async().get(timeout=120)
    assert [o["document_id"] for o in outputs] == [f"doc{1 + i % 3}" for i in range(50)]
    for doc in ("doc1", "doc2", "doc3"):
        saved = json.loads((documents.processed_dir() / f"{doc}.json").read_text(encoding="utf-8"))
        assert saved["document_id"] == doc
    assert not list(documents.processed_dir().glob("*.tmp*")), "no temporary file may be left behind"


def test_concurrent_calls_for_one_document_on_in_kernel_threads(app):
    with celerynb.LocalCluster(app, workers=1, pool="threads", concurrency=4) as local:
        _fifty_documents_in_parallel()
        assert local.workers[0].pool == "threads"


def test_concurrent_calls_for_one_document_on_worker_processes(app):
    with celerynb.LocalCluster(app, workers=0, processes=4) as local:
        _fifty_documents_in_parallel()
        assert len(local.processes) == 1


def test_failed_save_leaves_no_temporary_file():
    from celerynb.workers import documents

    with pytest.raises(TypeError):
        documents.save_output("doc1", {"not json": object()})
    assert not list(documents.processed_dir().glob("*.tmp*"))
