"""A cell task's options do what they say on every worker, tested by behaviour: calls delayed
by the rate limit, a message left unacknowledged while it runs, a time limit that stops it.

In-kernel workers (the default local cluster) come first: the worker processes, a module-wide
``celerynb up --detach`` (prefork, started before any cell exists, as in
``test_cell_shipping.py``), would otherwise share the queue with them.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import redis
import test_cell_shipping
from celery.exceptions import NotRegistered
from conftest import new_shell, wait_for

import celerynb

pytestmark = pytest.mark.slow

up_cluster, ip = test_cell_shipping.up_cluster, test_cell_shipping.ip  # its fixtures: worker processes

#: Returns when it started (monotonic clocks differ between processes: wall time).
STAMP = "import time\ndef stamp(i):\n    return time.time()\n"


def _spread(task, calls: int = 5) -> float:
    """Seconds between the first and the last of ``calls`` calls starting."""
    starts = sorted(celerynb.map(task, range(calls)).get(timeout=60))
    return starts[-1] - starts[0]


@pytest.fixture
def kernel_ip(cluster, app, tmp_path, monkeypatch):
    """A shell on the in-kernel workers (started before any cell exists)."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = new_shell()
    shell.run_line_magic("load_ext", "celerynb")
    yield shell
    shell.run_line_magic("unload_ext", "celerynb")
    for name in [n for n in list(app.tasks) if n.startswith("notebook.")]:
        app.tasks.pop(name, None)
    TerminalInteractiveShell.clear_instance()


def test_rate_limit_follows_a_redefinition_on_in_kernel_workers(kernel_ip):
    # 5 calls at 2/s start over at least 2 s; without a limit well under 1 s, even on a busy machine.
    kernel_ip.run_cell_magic("celery_task", "", STAMP)
    assert _spread(kernel_ip.user_ns["stamp"]) < 1.0  # no limit: the worker has built this name's strategy
    kernel_ip.run_cell_magic("celery_task", "--rate-limit 2/s", STAMP)
    assert _spread(kernel_ip.user_ns["stamp"]) >= 1.8
    kernel_ip.run_cell_magic("celery_task", "", STAMP)
    assert _spread(kernel_ip.user_ns["stamp"]) < 1.0  # and the limit goes with the version that had it


SPIN = (
    "import time\n"
    "from celery.exceptions import SoftTimeLimitExceeded\n"
    "def spin(seconds):\n"
    "    try:\n"
    "        end = time.monotonic() + seconds\n"
    "        while time.monotonic() < end:\n"
    "            pass\n"
    "    except SoftTimeLimitExceeded:\n"
    "        return 'soft limit'\n"
    "    return 'ran out'\n"
)


def test_time_limits_hold_on_in_kernel_threads(kernel_ip, app):
    """In-kernel workers are threads: the limits are enforced there too (celerynb.workers.stopping)."""
    from celery.exceptions import TimeLimitExceeded

    kernel_ip.run_cell_magic("celery_task", "--soft-time-limit 0.3", SPIN)
    assert kernel_ip.user_ns["spin"].delay(60).get(timeout=30) == "soft limit"
    kernel_ip.run_cell_magic("celery_task", "--time-limit 0.3", SPIN.replace("SoftTimeLimitExceeded:", "ZeroDivisionError:"))
    result = kernel_ip.user_ns["spin"].delay(60)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=30)
    assert result.state == "FAILURE"
    kernel_ip.run_cell_magic("celery_task", "", SPIN)
    assert kernel_ip.user_ns["spin"].delay(0).get(timeout=30) == "ran out"  # the pool thread took the next task


def test_rate_limit_holds_on_worker_processes(ip):
    ip.run_cell_magic("celery_task", "--rate-limit 4/s", STAMP)
    # 5 calls at 4 a second: the last starts at least 4 intervals (1 s) after the first.
    assert _spread(ip.user_ns["stamp"]) >= 0.9


GATED = (
    "import os, time\n"
    "def gated(path):\n"
    "    open(path + '.started', 'w').close()\n"
    "    while not os.path.exists(path):\n"
    "        time.sleep(0.01)\n"
    "    return os.getpid()\n"
)


def _unacked_ids(broker_url: str) -> set[str]:
    """Ids of the messages kombu's Redis transport holds as delivered but not acknowledged."""
    client = redis.Redis.from_url(broker_url)
    try:
        return {json.loads(v)[0]["headers"]["id"] for v in client.hvals("unacked")}
    finally:
        client.close()


@pytest.mark.parametrize("acks_late", [True, False])
def test_acks_late_keeps_a_running_cells_message_unacknowledged(ip, app, tmp_path, acks_late):
    ip.run_cell_magic("celery_task", "--acks-late" if acks_late else "", GATED)
    gate = tmp_path / f"gate-{acks_late}"
    result = ip.user_ns["gated"].delay(str(gate))
    wait_for(lambda: (tmp_path / f"{gate.name}.started").exists(), timeout=30, message="the task to start")
    running_unacked = result.id in _unacked_ids(app.conf.broker_url)
    gate.touch()
    assert result.get(timeout=30) != os.getpid()
    assert running_unacked is acks_late  # a worker crash now would redeliver it only with --acks-late


def test_time_limit_stops_a_cell_on_worker_processes(ip):
    ip.run_cell_magic("celery_task", "--soft-time-limit 1 --time-limit 3",
                      "import time\ndef slow():\n    time.sleep(20)\n")
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        ip.user_ns["slow"].delay().get(timeout=30)
    assert type(caught.value).__name__ == "SoftTimeLimitExceeded"
    assert time.monotonic() - started < 15  # stopped, not run to its end


def test_a_typo_is_rejected_as_unregistered_and_nothing_is_kept(ip, app):
    result = app.send_task("notebook.no_such_cell_typo")
    with pytest.raises(NotRegistered):
        result.get(timeout=30)
    registered = [n for names in (app.control.inspect(timeout=5).registered() or {}).values() for n in names]
    assert registered and "notebook.no_such_cell_typo" not in registered


def test_stand_ins_are_never_registered_and_stay_bounded(app):
    """Looking up names no kernel defined (a typo, a flood of them) never grows the registry."""
    from celerynb.workers import cells

    tasks = app.tasks
    before = set(tasks)
    made = [tasks[f"notebook.never_defined_{i}"] for i in range(cells.STANDINS_KEPT + 50)]
    assert set(tasks) == before  # nothing registered: `in`, iteration and `inspect registered` unchanged
    assert all(getattr(t, "_celerynb_standin", False) for t in made)
    assert len(tasks.standins) == cells.STANDINS_KEPT
    assert tasks["notebook.never_defined_0"] is not made[0]  # the oldest was dropped, made anew
