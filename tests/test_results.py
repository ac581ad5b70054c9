"""``celerynb.wait`` / ``gather``: asyncio futures resolved by the shared monitor."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import command_calls, commands_sent

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
    sweeps_before = monitor.stats["reconciles"]
    # The embedded server is private to this session: every command it counts is ours.
    before = command_calls(cluster.broker_url)
    values = asyncio.run(results.gather(*ids, timeout=120))
    sent = commands_sent(before, command_calls(cluster.broker_url))
    sweeps = monitor.stats["reconciles"] - sweeps_before
    assert len(values) == 1000 and all(v["words"] == 2 for v in values)
    # States are pushed: no task key was read on its own (a GET per task would be 1,000 GETs);
    # one batched MGET over the ids plus at most one per reconcile sweep (a poll per task
    # would be 1,000 MGETs or more), each id read once plus once per sweep at most.
    assert sent.get("get", 0) == 0, sent
    assert 1 <= sent.get("mget", 0) <= 1 + sweeps, (sent, sweeps)
    assert monitor.stats["mget_keys"] - keys_before <= 1000 * (1 + sweeps)


def test_bad_input_is_one_clear_sentence():
    with pytest.raises(TypeError, match="Cannot follow int"):
        asyncio.run(results.gather(42))


def test_eager_result_resolves(app):
    from celerynb.workers.tasks import analyze_content

    app.conf.task_always_eager = True
    r = analyze_content.delay("eager words here")
    assert asyncio.run(results.wait(r, timeout=5))["words"] == 3


def test_get_of_an_id_nothing_knows_says_so_in_one_line(cluster):
    """Celery's own error is a chained traceback saying only "The operation timed out."."""
    from celery.exceptions import TimeoutError as ResultTimeout

    from celerynb.tracking.submitted import enable_submit_log
    from celerynb.workers.tasks import analyze_content

    enable_submit_log()
    with pytest.raises(ResultTimeout) as unknown:
        cluster.app.AsyncResult("no-such-id").get(timeout=1)
    assert "no task 'no-such-id' is known" in str(unknown.value) and "check the id" in str(unknown.value)
    assert unknown.value.__cause__ is None and unknown.value.__suppress_context__
    queued = analyze_content.apply_async(("a b",), countdown=600)  # known: an ordinary timeout
    try:
        with pytest.raises(ResultTimeout, match="The operation timed out"):
            queued.get(timeout=1)
    finally:
        queued.revoke()


def test_get_of_a_failed_task_shows_the_tasks_own_frames(cluster):
    from celerynb.workers.tasks import analyze_content

    r = analyze_content.delay(12345)
    with pytest.raises(TypeError, match="expects text") as err:
        r.get(timeout=30)
    (note,) = err.value.__notes__
    assert note.startswith(f"Raised in tasks.analyze_content ({r.id}) on its worker:")
    assert 'celerynb/workers/tasks.py", line' in note and "raise TypeError" in note
    assert "celery/app/trace.py" not in note and "celerynb/workers/cells.py" not in note
    # Under the caller's own lines only result.get(): no vine/Celery frames before the task's.
    files = [frame.filename for frame in __import__("traceback").extract_tb(err.value.__traceback__)]
    assert not [f for f in files if "/vine/" in f or "celery/backends" in f], files
    with pytest.raises(Exception) as again:  # the same exception raised again: one note, not two
        r.get(timeout=30)
    assert len(again.value.__notes__) == 1


def test_get_in_a_kernel_shows_the_callers_lines_then_the_tasks(kernel):
    """With the extension loaded, IPython shows no Celery or vine frame between the two."""
    import re

    setup = kernel.run("%load_ext celerynb\nimport celerynb\ncelerynb.start()\nfrom celerynb.workers.tasks import analyze_content")
    assert setup.status == "ok", setup.error
    failed = kernel.run("def mine():\n    return analyze_content.delay(12345).get(timeout=30)\nmine()")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(failed.error["traceback"]))
    assert "in mine()" in shown and "TypeError: analyze_content expects text, got int." in shown
    assert 'workers/tasks.py", line' in shown.split("on its worker:")[1]
    assert "celery/result.py" not in shown and "vine" not in shown and "_compat" not in shown, shown
    kernel.run("celerynb.stop()")
