"""A message the worker refuses to decode ends its task in FAILURE with the reason, where the
displays look, instead of PENDING forever with the refusal only in the worker log."""

from __future__ import annotations

import pytest
from conftest import wait_for

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("processes", [0, 1], ids=["in-kernel", "worker-process"])
def test_pickle_message_is_refused_and_the_task_says_why(app, processes):
    import celerynb
    from celerynb.tracking.monitor import get_monitor
    from celerynb.workers.tasks import analyze_content

    celerynb.start(workers=0 if processes else 1, processes=processes)
    result = analyze_content.apply_async(("hello",), serializer="pickle")
    monitor = get_monitor(app)
    monitor.track([result.id])
    wait_for(lambda: monitor.snapshot(result.id).ready, timeout=20, message="the refused task to end")
    snap = monitor.snapshot(result.id)
    assert snap.state == "FAILURE"
    assert snap.info["exc_type"] == "MessageRefused"
    text = " ".join(snap.info["exc_message"])
    assert "pickle" in text and "serializer='json'" in text
    # The worker goes on: the next task is served.
    assert analyze_content.delay("hello world").get(timeout=20)["words"] == 2
