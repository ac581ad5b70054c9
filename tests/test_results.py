"""``celerynb.wait`` / ``gather``: asyncio futures resolved by the shared monitor."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from celerynb.tracking import awaiting as results
from celerynb.tracking.monitor import get_monitor


def test_wait_returns_value(cluster):
    from celerynb.workers.tasks import long_process

    r = long_process.delay([1, 2, 3], delay=0.01)
    assert asyncio.run(results.wait(r, timeout=20)) == {"status": "completed", "processed": 3}


def test_wait_raises_the_task_exception_like_get(cluster):
    from celerynb.workers.tasks import risky_task

    r = risky_task.delay("fail")
    # The guide's task stores its own FAILURE meta (no exc_module) just before raising, so
    # like AsyncResult.get() the rebuilt class may be a stand-in with the same name.
    with pytest.raises(Exception, match="cannot process 'fail'") as info:
        asyncio.run(results.wait(r, timeout=20))
    assert type(info.value).__name__ == "PermanentError"
    exc = asyncio.run(results.wait(r, timeout=20, propagate=False))
    assert type(exc).__name__ == "PermanentError"


def test_wait_timeout_is_asyncio_timeout(cluster):
    with pytest.raises(asyncio.TimeoutError, match="1 of 1 task"):
        asyncio.run(results.wait(str(uuid.uuid4()), timeout=0.2))


def test_gather_keeps_order_and_mixes_inputs(cluster):
    from celery import group

    from celerynb.workers.tasks import analyze_content, risky_task

    g = group(analyze_content.s(f"word{i} other") for i in range(3)).apply_async()
    single = risky_task.delay("ok")
    bad = risky_task.delay("fail")
    values = asyncio.run(results.gather(g, single.id, bad, timeout=30, return_exceptions=True))
    assert [v["keywords"][0] for v in values[:3]] == ["other"] * 3
    assert values[3] == {"arg": "ok", "attempts": 1}
    assert type(values[4]).__name__ == "PermanentError"


def test_gather_thousand_results_uses_batched_reads(cluster):
    from celerynb.workers.tasks import analyze_content

    app = cluster.app
    ids = []
    with app.producer_or_acquire() as producer:
        for i in range(1000):
            ids.append(analyze_content.apply_async((f"t{i} text",), producer=producer, ignore_result=False).id)
    monitor = get_monitor(app)
    keys_before = monitor.stats["mget_keys"]
    values = asyncio.run(results.gather(*ids, timeout=120))
    assert len(values) == 1000 and all(v["words"] == 2 for v in values)
    # One initial read per id plus a few reconcile sweeps: nothing like a poll per task per tick.
    assert monitor.stats["mget_keys"] - keys_before < 1000 * 10


def test_bad_input_is_one_clear_sentence():
    with pytest.raises(TypeError, match="Cannot follow int"):
        asyncio.run(results.gather(42))


def test_eager_result_resolves(app):
    from celerynb.workers.tasks import analyze_content

    app.conf.task_always_eager = True
    r = analyze_content.delay("eager words here")
    assert asyncio.run(results.wait(r, timeout=5))["words"] == 3
