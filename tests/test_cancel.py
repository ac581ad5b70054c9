"""Cancel stops running tasks on every pool, from the display's button in a real kernel.

Each pool gets one kernel: tasks defined in cells (shipped to worker processes for prefork),
clicked through the widget model's ``click()`` as JupyterLab's button would, then the worker
must take the next task. A task that loops without ``track()`` only ends if it is stopped, so
reaching REVOKED is the proof; click-to-stop times are reported by ``benchmarks/bench_cancel.py``.
"""

from __future__ import annotations

import json
import uuid

import pytest

SETUP = """
%load_ext celerynb
import json, time, celerynb
from celerynb.workers.celery_app import app
cluster = celerynb.start(**{options})

def until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)

def click_cancel(result):
    display = celerynb.progress(result, widget=True)
    until(lambda: display.monitor.snapshot(result.id).state in ("STARTED", "PROGRESS"))
    display.cancel_button.click()
    return display
"""

#: Cell tasks (shipped to worker processes): one looping, one sleeping in steps, one in a C call.
TASKS = [
    "def spin():\n    while True:\n        pass\n",
    "import time\ndef steps(step):\n    while True:\n        time.sleep(step)\n",
    "def blocked(key):\n    from celerynb.workers.celery_app import app\n"
    "    app.backend.client.blpop(key, 120)  # one long C call: stops when it returns\n"
    "    app.backend.client.set(key + ':after', 1, ex=600)\n",
    "def add(a, b):\n    return a + b\n",
    "import time\nfrom celery.exceptions import SoftTimeLimitExceeded\ndef patient():\n    try:\n"
    "        while True:\n            time.sleep(0.05)\n    except SoftTimeLimitExceeded:\n        return 'soft limit'\n",
    "import signal\ndef stubborn():\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    while True:\n        pass\n",
]

STOP = """
display = click_cancel({call})
display.wait(timeout=60)
print(json.dumps([display.monitor.snapshot(display.ids[0]).state, add.delay(1, 2).get(timeout=60)]))
"""

BLOCKED = """
key = {key!r}
display = click_cancel(blocked.delay(key))
from celerynb.workers import stopping
until(lambda: stopping.stop_raised(display.ids[0]), timeout=30)  # the grace period is over
still = (display.monitor.snapshot(display.ids[0]).state, "cancelling" in display.text(),
         celerynb.TaskTable(display.ids).rows()[0]["result"])
app.backend.client.rpush(key, "go")
display.wait(timeout=60)
print(json.dumps([still, display.monitor.snapshot(display.ids[0]).state,
                  bool(app.backend.client.exists(key + ":after")), add.delay(2, 3).get(timeout=60)]))
"""

LIMITS = """
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
hard = spin.apply_async(time_limit=0.5, soft_time_limit=0.5)
try:
    hard.get(timeout=60)
except (TimeLimitExceeded, SoftTimeLimitExceeded):  # equal limits: either may win (prefork's race)
    pass
soft = patient.apply_async(soft_time_limit=0.3)
print(json.dumps([hard.state, soft.get(timeout=60), add.delay(3, 4).get(timeout=60)]))
"""

POOLS = {
    "threads": {"workers": 1, "pool": "threads"},
    "solo": {"workers": 1, "pool": "solo"},
    "prefork": {"workers": 0, "processes": 1},
}


def _last_json(reply):
    assert reply.status == "ok", reply.error
    return json.loads(reply.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pool", list(POOLS))
def test_cancel_button_stops_running_tasks(kernel, pool):
    setup = kernel.run(SETUP.format(options=POOLS[pool]), timeout=120)
    assert setup.status == "ok", setup.error
    for source in TASKS:
        defined = kernel.run("%%celery_task\n" + source, timeout=60)
        assert defined.status == "ok", defined.error
    for call in ("spin.delay()", "steps.delay(0.5)"):
        assert _last_json(kernel.run(STOP.format(call=call), timeout=120)) == ["REVOKED", 3], (pool, call)
    if pool == "prefork":  # a child that ignores SIGTERM is killed
        assert _last_json(kernel.run(STOP.format(call="stubborn.delay()"), timeout=120)) == ["REVOKED", 3]
    else:  # (a prefork child dies at SIGTERM even inside the call)
        still, state, went_on, next_result = _last_json(kernel.run(BLOCKED.format(key=f"cancel-test-{uuid.uuid4().hex}"),
                                                                   timeout=120))
        assert still == ["STARTED", True, "cancelling"], "shown cancelling while the call blocks, not stopped yet"
        assert (state, went_on, next_result) == ("REVOKED", False, 5), "stopped when the call returned"
    # Time limits, per call, hold on every pool (prefork: Celery's own; threads/solo: ours).
    assert _last_json(kernel.run(LIMITS, timeout=120)) == ["FAILURE", "soft limit", 7]
    kernel.run("celerynb.stop()", timeout=60)


def test_cancel_function_stops_a_group(cluster, app):
    """``celerynb.cancel`` takes what ``map``/``group`` return; tasks already ended are left alone."""
    import time

    from celery import group
    from conftest import registered, wait_for

    import celerynb

    def spin(n):
        if n == 0:
            return "quick"
        while True:
            time.sleep(0.05)

    with registered(app, spin, "tests.cancel_spin") as task:
        quick = task.delay(0)
        assert quick.get(timeout=30) == "quick"
        runs = group(task.s(1) for _ in range(3)).apply_async()
        wait_for(lambda: sum(r.state != "PENDING" for r in runs.results) >= 1, timeout=30, message="a task running")
        assert celerynb.cancel([quick, runs]) == 3
        wait_for(lambda: all(r.state == "REVOKED" for r in runs.results), timeout=30, message="all revoked")
        assert quick.state == "SUCCESS"
        with pytest.raises(ValueError, match="cancel\\(\\) needs tasks"):
            celerynb.cancel([])


def test_a_task_starting_while_the_watchdog_ticks_does_not_wake_it(monkeypatch):
    """One thread switch less per task: the watchdog is woken only when it sleeps for lack of tasks."""
    import threading

    from celerynb.workers import stopping

    class CountingCondition(threading.Condition):
        notified = 0

        def notify(self, n=1):
            CountingCondition.notified += 1
            super().notify(n)

    monkeypatch.setattr(stopping, "_wake", CountingCondition(stopping._lock))
    done = []
    for i in range(200):
        stopping.apply_target(done.append, (i,), callback=lambda _: None)
    assert done == list(range(200))
    assert CountingCondition.notified <= 1, CountingCondition.notified  # the first, if it slept
