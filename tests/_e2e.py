"""End-to-end checks of the predefined tasks, shared by every broker/worker combination.

Each ``check_*`` submits through celerynb's app as it is currently configured (embedded
cluster, a ``celerynb up`` discovered through its file, the machine's Redis 7, RabbitMQ) and
asserts on what the workers really did.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from celery.exceptions import TaskRevokedError

TIMEOUT = 30.0


def check_every_task(timeout: float = TIMEOUT) -> None:
    """Every task of ``celerynb.workers.tasks`` runs and returns its real output."""
    from celerynb.workers import tasks

    doc = tasks.process_document.delay("doc1", {"format": "markdown", "keywords": 3}).get(timeout=timeout)
    assert doc["document_id"] == "doc1" and doc["format"] == "markdown"
    assert doc["content"].startswith("# Getting Started with Distributed Queues")
    assert doc["word_count"] > 10 and len(doc["keywords"]) == 3 and len(doc["checksum"]) == 16

    # The guide also calls it with the id alone.
    plain = tasks.process_document.delay("doc2").get(timeout=timeout)
    assert plain["format"] == "json" and set(plain["content"]) == {"title", "body"}

    stats = tasks.analyze_content.delay("One two three. Four five!").get(timeout=timeout)
    assert stats["words"] == 5 and stats["sentences"] == 2 and stats["unique_words"] == 5
    stored = tasks.analyze_content.delay("doc:doc1", top_n=2).get(timeout=timeout)
    assert stored["words"] == doc["word_count"] and len(stored["keywords"]) == 2

    report = tasks.generate_report.delay("daily").get(timeout=timeout)
    assert report["kind"] == "daily" and report["documents"] >= 2
    assert report["formats"].get("markdown", 0) >= 1 and report["formats"].get("json", 0) >= 1
    assert report["total_words"] >= doc["word_count"] + plain["word_count"]

    cleaned = tasks.cleanup.delay(0).get(timeout=timeout)
    assert {"doc1", "doc2"} <= set(cleaned["documents"]) and cleaned["removed"] == len(cleaned["documents"])
    assert tasks.generate_report.delay("weekly").get(timeout=timeout)["documents"] == 0

    assert tasks.long_process.delay([1, 2, 3], delay=0.01).get(timeout=timeout) == {
        "status": "completed",
        "processed": 3,
    }
    assert tasks.risky_task.delay("fine").get(timeout=timeout) == {"arg": "fine", "attempts": 1}


def check_retries(timeout: float = TIMEOUT) -> None:
    """Temporary errors are retried with exponential backoff; permanent ones end in FAILURE."""
    from celerynb.workers import tasks

    submitted = datetime.now(UTC)
    flaky = tasks.risky_task.delay("flaky:2", base_delay=0.05)
    assert flaky.get(timeout=timeout) == {"arg": "flaky:2", "attempts": 3}
    assert flaky.state == "SUCCESS" and flaky.retries == 2
    # Backoff: 0.05 s then 0.1 s before the third attempt could run.
    assert flaky.date_done - submitted >= timedelta(seconds=0.15)

    failing = tasks.risky_task.delay("fail", base_delay=0.05)
    with pytest.raises(Exception) as info:
        failing.get(timeout=timeout)
    assert type(info.value).__name__ == "PermanentError" and "cannot process 'fail'" in str(info.value)
    assert failing.state == "FAILURE" and failing.retries == 0


def check_countdown(countdown: float = 0.6, timeout: float = TIMEOUT) -> None:
    """A task with a countdown does not run before it."""
    from celerynb.workers import tasks

    submitted = datetime.now(UTC)
    result = tasks.analyze_content.apply_async(("counted words here",), countdown=countdown)
    assert result.get(timeout=timeout)["words"] == 3
    assert result.date_done - submitted >= timedelta(seconds=countdown)


def check_expires_before_countdown(timeout: float = TIMEOUT) -> None:
    """A task whose expiry comes before its countdown never runs: it ends REVOKED."""
    from celerynb.workers import tasks

    result = tasks.analyze_content.apply_async(("never analysed",), countdown=0.5, expires=0.1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=timeout)
    assert result.state == "REVOKED"


def check_progress(timeout: float = TIMEOUT) -> None:
    """``long_process`` reports PROGRESS with the guide's meta, seen through the result backend."""
    from celerynb.workers import tasks

    total = 8
    result = tasks.long_process.delay(list(range(total)), delay=0.15)
    seen: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    while not result.ready():
        assert time.monotonic() < deadline, f"long_process did not finish; states seen: {seen}"
        # One read of the stored meta: state and info read apart could straddle the task's end.
        meta = result.backend.get_task_meta(result.id)
        state, info = meta["status"], meta["result"]
        if state == "PROGRESS" and (not seen or seen[-1][1] != info):
            seen.append((state, dict(info)))
        time.sleep(0.02)
    assert result.get(timeout=timeout) == {"status": "completed", "processed": total}
    assert len(seen) >= 2, f"too few PROGRESS updates observed: {seen}"
    for _, meta in seen:
        assert set(meta) == {"progress", "current", "total", "status"}
        assert meta["total"] == total and meta["progress"] == int(meta["current"] / total * 100)
        assert meta["status"] == f"Processing item {meta['current']}/{total}"
    currents = [meta["current"] for _, meta in seen]
    assert currents == sorted(currents) and len(set(currents)) == len(currents)


def check_everything(timeout: float = TIMEOUT) -> None:
    """All of the above, for a broker/worker combination tested as a whole."""
    check_every_task(timeout)
    check_retries(timeout)
    check_countdown(timeout=timeout)
    check_expires_before_countdown(timeout)
    check_progress(timeout)
