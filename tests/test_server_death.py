"""The embedded server killed under a running cluster: one clear line, a working status, a restart.

Reported: the next ``.delay()`` raised ``OperationalError``, the one after ``RuntimeError: Retry
limit exceeded`` after 2.6 s with a traceback on stderr; ``%celery status`` raised after 6.8 s;
``repr(cluster)`` said running.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_killed_server_is_one_line_status_still_works_and_restart_recovers(kernel):
    kernel.run("%load_ext celerynb")
    kernel.run("%%celery_task\ndef plus_one(x):\n    return x + 1\n")
    assert kernel.run("plus_one.delay(1).get(timeout=10)").text == "2"
    pid = int(kernel.run("import celerynb; celerynb.current().server.pid").text)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: kernel.run("celerynb.current().server_died").text == "True", message="server seen dead")

    started = time.monotonic()
    sent = kernel.run("plus_one.delay(2)")
    took = time.monotonic() - started
    assert "the embedded server died (killed by signal 9)" in sent.stderr + str(sent.error)
    assert "%celery restart" in str(sent.error)
    assert "Traceback" not in sent.stderr and "Retry limit" not in sent.stderr + str(sent.error)
    assert took < 2.0, f"the error took {took:.1f} s"
    print(f"\nServerDied raised {took * 1000:.0f} ms after .delay() (kernel round trip included)")

    started = time.monotonic()
    status = kernel.run("%celery status")
    assert status.status == "ok", status
    status_took = time.monotonic() - started
    assert "died" in status.text and status_took < 5.0
    print(f"%celery status answered in {status_took * 1000:.0f} ms")
    assert "broken: its server died" in kernel.run("repr(celerynb.current())").text

    restarted = kernel.run("%celery restart")
    assert restarted.status == "ok", restarted
    assert kernel.run("plus_one.delay(41).get(timeout=10)").text == "42"
    assert int(kernel.run("celerynb.current().server.pid").text) != pid
