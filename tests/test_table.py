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
