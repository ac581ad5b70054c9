"""``celerynb.retry_failed`` and the "Retry failed" buttons: a group with three failures sent
again with the same arguments and options, a cancelled task retried, displays and tables that
follow the new attempts in the same rows, and the shapes ``retry_failed`` takes and returns."""

from __future__ import annotations

import html as html_module
import re
import uuid

import pytest
from celery import group
from celery.result import AsyncResult, GroupResult
from conftest import registered, wait_for

import celerynb
from celerynb.display.progress import WidgetProgress
from celerynb.display.table import TaskTable
from celerynb.tracking.monitor import get_monitor
from celerynb.tracking.resubmit import NotResubmittable, attempt_of
from celerynb.tracking.submitted import enable_submit_log, submitted

FAILING = (1, 3, 4)


def flaky(self, i, key, slow=False):
    """Fails (or, with ``slow``, runs ~30 s, cancellable) until the test sets its Redis ``key``."""
    ready = self.app.backend.client.get(key)
    if not ready:
        if slow:
            for _ in celerynb.track(range(600), task=self):
                __import__("time").sleep(0.05)
        if i in FAILING:
            raise ValueError(f"item {i} is not ready")
    return i * 10


@pytest.fixture
def flaky_task(cluster):
    enable_submit_log()  # as %load_ext celerynb does: the options of every send are recorded
    with registered(cluster.app, flaky, "tests.retry_flaky", bind=True) as task:
        yield task


@pytest.fixture
def key(cluster):
    """A Redis key of this test's own; removed afterwards."""
    name = f"celerynb-test-retry:{uuid.uuid4()}"
    yield name
    cluster.app.backend.client.delete(name)


def shown_text(markup: str) -> str:
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def test_group_with_three_failures_retried_in_place(cluster, flaky_task, key):
    sigs = [flaky_task.s(i, key).set(queue="high-priority", headers={"x-retry-test": "kept"}) for i in range(6)]
    first = group(sigs).apply_async()
    disp = WidgetProgress([r.id for r in first.results], cluster.app)
    table = TaskTable(first, app=cluster.app)
    disp.wait(timeout=30)
    states = [get_monitor(cluster.app).snapshot(r.id).state for r in first.results]
    assert states == ["SUCCESS", "FAILURE", "SUCCESS", "FAILURE", "FAILURE", "SUCCESS"]
    assert disp.retry_button.layout.display is None and "(3)" in disp.retry_button.description
    assert "attempt" not in disp.text()

    cluster.app.backend.client.set(key, "1")
    ended_before = disp.ended  # the first finish: the retries may all end before click() returns
    disp.retry_button.click()  # what the button runs: retry_failed(display)
    old_ids = [r.id for r in first.results]
    assert [a == b for a, b in zip(disp.ids, old_ids, strict=True)] == [True, False, True, False, False, True]
    assert table.ids == disp.ids  # the table showing the same tasks switched its rows too
    # Back to life: the monitor's listener (re-armed by the retry) finishes it again, no wait() needed.
    wait_for(lambda: disp.finished and disp.ended != ended_before, timeout=30, message="display finished again")
    values = disp.wait(timeout=30)
    assert values == [0, 10, 20, 30, 40, 50]
    assert disp.finished and disp.retry_button.layout.display == "none"

    lines = disp.text().splitlines()[1:]
    assert [("(attempt 2)" in line) for line in lines] == [i in FAILING for i in range(6)], lines
    assert shown_text(disp.summary_html()).count("attempt 2") == 3
    for i, tid in enumerate(disp.ids):
        assert attempt_of(tid) == (2 if i in FAILING else 1)
        if i in FAILING:  # the same queue and the caller's own header went with the new attempt
            assert get_monitor(cluster.app).full_snapshot(tid).queue == "high-priority"
            assert submitted.get(tid).options["headers"]["x-retry-test"] == "kept"
            assert submitted.get(tid).options["queue"] == "high-priority"
    table.monitor.wait(table.ids, 10)
    assert "SUCCESS 6; 3 sent again (attempt 2)" in repr(table)
    assert shown_text(table._repr_html_()).count("attempt 2") == 3


def test_retry_failed_keeps_the_shape_and_order(cluster, flaky_task, key, capsys):
    first = group(flaky_task.s(i, key) for i in range(5)).apply_async()
    with pytest.raises(ValueError):
        first.get(timeout=30)
    get_monitor(cluster.app).wait([r.id for r in first.results], 30)
    cluster.app.backend.client.set(key, "1")
    again = celerynb.retry_failed(first)
    assert isinstance(again, GroupResult) and again.id == first.id
    kept = [new.id == old.id for new, old in zip(again.results, first.results, strict=True)]
    assert kept == [i not in FAILING for i in range(5)]
    assert again.get(timeout=30) == [0, 10, 20, 30, 40]

    # One result in, one result out; a list stays a list.
    single = flaky_task.delay(9, f"{key}-absent")
    single.get(timeout=30)
    assert celerynb.retry_failed(single) is single  # it succeeded: nothing to do, one line says so
    assert capsys.readouterr().out.strip() == (
        "retry_failed: nothing to retry: none of the 1 task(s) ended in FAILURE or REVOKED.")
    failing = flaky_task.delay(1, f"{key}-absent")
    with pytest.raises(ValueError):
        failing.get(timeout=30)
    retried = celerynb.retry_failed([failing, single])
    assert isinstance(retried, list) and retried[1] is single and retried[0].id != failing.id
    assert isinstance(retried[0], AsyncResult) and attempt_of(retried[0].id) == 2
    with pytest.raises(ValueError):
        retried[0].get(timeout=30)  # still failing: a third attempt counts on
    third = celerynb.retry_failed(retried[0])
    assert attempt_of(third.id) == 3


def test_a_cancelled_task_is_retried(cluster, flaky_task, key):
    r = flaky_task.delay(0, key, slow=True)
    disp = WidgetProgress([r.id], cluster.app)
    wait_for(lambda: disp.monitor.snapshot(r.id).state == "PROGRESS", timeout=20, message="task running")
    disp.row_cancel_buttons[0].click()  # the row's own Cancel
    disp.wait(timeout=20)
    assert disp.monitor.snapshot(r.id).state == "REVOKED"
    assert disp.retry_button.layout.display is None
    cluster.app.backend.client.set(key, "1")
    new = celerynb.retry_failed(r)
    assert new.get(timeout=30) == 0
    disp.wait(timeout=10)
    assert disp.ids == [new.id] and disp.text().endswith("SUCCESS (attempt 2)")


def test_bad_input_says_what_to_pass(cluster):
    with pytest.raises(TypeError, match="pass an AsyncResult"):
        celerynb.retry_failed(42)
    with pytest.raises(ValueError, match="needs results"):
        celerynb.retry_failed([])


def test_a_task_nobody_knows_is_not_retried(cluster):
    tid = str(uuid.uuid4())  # a REVOKED state stored by hand: no name, no arguments anywhere
    cluster.app.backend.store_result(tid, None, "REVOKED")
    with pytest.raises(NotResubmittable, match="submit it again"):
        celerynb.retry_failed(AsyncResult(tid, app=cluster.app))


def test_many_tasks_retried_in_one_aggregate_bar(cluster, flaky_task, key):
    results = [flaky_task.delay(i % 6, key) for i in range(12)]  # 6 fail: items 1, 3, 4 twice
    disp = WidgetProgress([r.id for r in results], cluster.app)
    assert not disp.few
    disp.wait(timeout=30)
    assert disp.failed_count() == 6 and disp.retry_button.layout.display is None
    cluster.app.backend.client.set(key, "1")
    disp.retry_button.click()
    wait_for(lambda: disp.finished, timeout=30, message="aggregate finished again")
    assert disp.wait(timeout=10) == [(i % 6) * 10 for i in range(12)]
    assert disp.text().splitlines() == [
        "12 tasks: 100% |####################| 12/12 done · SUCCESS 12",
        "6 of 12 tasks sent again (attempt 2)",
    ]


def test_a_batched_map_item_goes_again_as_a_task_of_its_own(cluster, flaky_task, key):
    mapped = celerynb.map(flaky_task, [(i, key) for i in range(6)], batch=3)
    get_monitor(cluster.app).wait([r.id for r in mapped.results], 30)
    cluster.app.backend.client.set(key, "1")
    again = celerynb.retry_failed(mapped)
    assert again.get(timeout=30) == [0, 10, 20, 30, 40, 50]
    retried = [r for r in again.results if attempt_of(r.id) == 2]
    assert len(retried) == 3
    assert {submitted.get(r.id).name for r in retried} == {"tests.retry_flaky"}  # not the batch runner


def test_an_eager_failure_is_retried_eagerly(cluster, flaky_task, key):
    cluster.app.conf.task_always_eager = True  # the app fixture turns it off again
    failed = flaky_task.delay(1, key)
    assert failed.state == "FAILURE"
    cluster.app.backend.client.set(key, "1")
    again = celerynb.retry_failed(failed)
    assert (type(again).__name__, again.get(), attempt_of(again.id)) == ("EagerResult", 10, 2)
