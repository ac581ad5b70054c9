"""TaskTable: rows from the monitor and the submit log, filter, sort, escaping, live refresh."""

from __future__ import annotations

import pytest
from conftest import wait_for

from celerynb.display.table import TaskTable
from celerynb.tracking.monitor import get_monitor


def test_table_of_given_results(cluster):
    from celerynb.workers.tasks import analyze_content, risky_task

    ok = analyze_content.delay("alpha beta")
    bad = risky_task.delay("fail")
    table = TaskTable([ok, bad])
    get_monitor(cluster.app).wait([ok.id, bad.id], timeout=30)
    rows = {r["id"]: r for r in table.rows()}
    assert rows[ok.id]["state"] == "SUCCESS" and rows[ok.id]["progress"] == 100
    assert rows[ok.id]["name"] == "tasks.analyze_content" and "'words': 2" in rows[ok.id]["result"]
    assert rows[bad.id]["result"].startswith("PermanentError: cannot process")
    assert rows[ok.id]["worker"]
    assert [r["id"] for r in table.filter(["FAILURE"]).rows()] == [bad.id]
    assert "1 of 2 tasks in FAILURE" in table._repr_html_()
    names = [r["name"] for r in table.filter(None).sort("name", descending=False).rows()]
    assert names == ["tasks.analyze_content", "tasks.risky_task"]
    with pytest.raises(ValueError, match="Unknown column 'nope'"):
        table.sort("nope")
    table.close()


def test_kernel_wide_table_picks_up_new_submissions(cluster):
    from celerynb.workers.tasks import analyze_content

    table = TaskTable()
    r = analyze_content.delay("picked up later")
    wait_for(lambda: r.id in table.ids, timeout=10, message="table saw the submitted task")
    get_monitor(cluster.app).wait([r.id], timeout=30)
    row = next(row for row in table.rows() if row["id"] == r.id)
    assert row["state"] == "SUCCESS" and "picked up later" in row["args"]
    assert "SUCCESS" in repr(table)
    table.close()


def test_user_data_is_escaped_everywhere(cluster):
    from celerynb.workers.tasks import analyze_content

    xss = "<script>alert('x')</script>"
    ok = analyze_content.delay(xss)
    bad = analyze_content.delay(12345)  # TypeError mentioning the type, plus our own payloads
    cluster.app.backend.store_result("xss-task", {"html": xss}, "SUCCESS")
    cluster.app.backend.store_result("xss-fail", ValueError(xss), "FAILURE")
    table = TaskTable([ok, bad, "xss-task", "xss-fail"])
    get_monitor(cluster.app).wait([ok.id, bad.id, "xss-task", "xss-fail"], timeout=30)
    html = table._repr_html_()
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") >= 3  # args, result, error


def test_to_dataframe_needs_pandas(cluster):
    table = TaskTable([])
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            table.to_dataframe()
    else:
        assert list(table.to_dataframe().columns)[:3] == ["id", "name", "state"]
    table.close()


def test_rows_of_tasks_that_ended_before_the_table_tell_their_times(cluster):
    from celerynb.workers.tasks import long_process

    r = long_process.delay([1, 2, 3], delay=0.1)
    get_monitor(cluster.app).wait([r.id], timeout=30)
    table = TaskTable([r])  # made after the end: nothing seen live
    (row,) = table.rows()
    assert row["state"] == "SUCCESS"  # read before the first picture, not PENDING
    assert 0.3 <= row["runtime"] < 5 and row["started"] is not None
    assert row["worker"] == cluster.workers[0].hostname  # the node, not just the machine
    assert row["args"] == "[1, 2, 3], delay=0.1"
    html = table._repr_html_()
    assert f">{row['runtime']:.1f}s<" in html and "PENDING" not in html
    table.close()


def test_queued_tasks_have_no_start_and_no_runtime(cluster):
    import uuid

    from celerynb.workers.tasks import analyze_content

    queued = analyze_content.apply_async(("never run",), queue=f"nobody-{uuid.uuid4().hex}")
    table = TaskTable([queued])
    (row,) = table.rows()
    assert (row["state"], row["started"], row["runtime"]) == ("PENDING", None, None)
    table.close()


def test_arguments_read_alike_and_rows_keep_their_order(cluster):
    from celerynb.workers.tasks import analyze_content

    results = [analyze_content.delay(f"text {i}") for i in (3, 1, 2)]
    table = TaskTable(results)
    before = [r["id"] for r in table.rows()]  # read from the submit log: nothing stored yet, maybe
    get_monitor(cluster.app).wait([r.id for r in results], timeout=30)
    rows = table.rows()
    assert [r["id"] for r in rows] == before == [r.id for r in results]  # submission order, never moved
    assert [r["args"] for r in rows] == ["'text 3'", "'text 1'", "'text 2'"]  # stored lists read as calls
    assert [r["args"] for r in table.sort("args").rows()] == ["'text 1'", "'text 2'", "'text 3'"]  # ascending
    assert table.sort("runtime").descending and not table.sort("name").descending
    table.close()
