"""Cell tasks on separate worker processes: shipped signed, verified, never pickled.

The cluster is ``celerynb up --detach`` with one prefork worker (2 processes) started before
any cell exists; the shell attaches with ``%celery connect auto --no-workers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from celery.result import AsyncResult
from conftest import new_shell

from celerynb.workers import cells


@pytest.fixture(scope="module")
def up_cluster():
    subprocess.run([sys.executable, "-m", "celerynb", "up", "--detach", "--workers", "1", "--concurrency", "2"],
                   check=True, capture_output=True, text=True, timeout=90)
    from celerynb import config

    record = config.read_discovery()
    yield record
    subprocess.run([sys.executable, "-m", "celerynb", "down"], check=True, capture_output=True, timeout=60)


@pytest.fixture
def ip(up_cluster, app, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = new_shell()
    shell.run_line_magic("load_ext", "celerynb")
    shell.run_line_magic("celery", "connect auto --no-workers")
    yield shell
    shell.run_line_magic("unload_ext", "celerynb")
    for name in [n for n in list(app.tasks) if n.startswith("notebook.")]:
        app.tasks.pop(name, None)
    TerminalInteractiveShell.clear_instance()


def test_cell_task_runs_in_worker_process_and_redefinition_takes_effect(ip):
    ip.run_cell_magic("celery_task", "", "import os\ndef where(x):\n    return {'pid': os.getpid(), 'v': 1, 'x': x}\n")
    first = ip.user_ns["where"].delay(1).get(timeout=30)
    assert first["pid"] != os.getpid() and first["v"] == 1
    ip.run_cell_magic("celery_task", "", "import os\ndef where(x):\n    return {'pid': os.getpid(), 'v': 2, 'x': x}\n")
    second = ip.user_ns["where"].delay(2).get(timeout=30)
    assert second["v"] == 2 and second["pid"] != os.getpid()


def test_queued_message_keeps_the_version_it_was_sent_with(ip, app):
    ip.run_cell_magic("celery_task", "", "def version():\n    return 'old'\n")
    old = ip.user_ns["version"]
    # A message sent with the old body, then a redefinition before a worker takes it.
    pending = old.apply_async(countdown=1)
    ip.run_cell_magic("celery_task", "", "def version():\n    return 'new'\n")
    assert ip.user_ns["version"].delay().get(timeout=30) == "new"
    assert pending.get(timeout=30) == "old"


def test_bound_cell_task_with_options_retries_on_worker(ip):
    cell = (
        "def flaky(self, n):\n"
        "    if self.request.retries < n:\n"
        "        raise self.retry(countdown=0.05)\n"
        "    return self.request.retries\n"
    )
    ip.run_cell_magic("celery_task", "--bind --max-retries 5", cell)
    assert ip.user_ns["flaky"].delay(2).get(timeout=30) == 2


def test_tampered_record_is_refused(ip, app):
    ip.run_cell_magic("celery_task", "", "def honest():\n    return 'honest'\n")
    task = ip.user_ns["honest"]
    record = task._celerynb_record
    cells.ship(app, record)
    client = app.backend.client
    stored = json.loads(client.get(cells.record_key(record["version"])))
    stored["source"] = "def honest():\n    return 'pwned'\n"
    client.set(cells.record_key(record["version"]), json.dumps(stored))
    result = task.delay()
    with pytest.raises(Exception, match="signature does not verify"):
        result.get(timeout=30)
    assert AsyncResult(result.id, app=app).state == "FAILURE"


@pytest.mark.reliability
@pytest.mark.parametrize("stored", [b"not json {", b'["a list"]', b'{"name": "notebook.garbled"}'])
def test_record_that_is_no_cell_record_is_refused(ip, app, stored):
    ip.run_cell_magic("celery_task", "", f"def garbled():\n    return {stored!r}\n")
    task = ip.user_ns["garbled"]
    cells.ship(app, task._celerynb_record)
    app.backend.client.set(cells.record_key(task._celerynb_record["version"]), stored)
    result = task.delay()
    with pytest.raises(cells.CellRefused, match="the store holds no valid cell record"):
        result.get(timeout=30)
    assert AsyncResult(result.id, app=app).state == "FAILURE"


@pytest.mark.reliability
def test_signed_version_runs_only_under_its_own_name(ip, app):
    ip.run_cell_magic("celery_task", "", "def harmless():\n    return 'harmless ran'\n")
    record = ip.user_ns["harmless"]._celerynb_record
    cells.ship(app, record)
    replay = app.send_task("notebook.elsewhere", headers={cells.HEADER: record["version"]})
    with pytest.raises(cells.CellRefused, match="runs only under its own name"):
        replay.get(timeout=30)
    # The name is part of what the signature covers: renaming the stored record breaks it.
    ip.run_cell_magic("celery_task", "", "def harmless2():\n    return 'harmless2 ran'\n")
    record = ip.user_ns["harmless2"]._celerynb_record
    cells.ship(app, record)
    client = app.backend.client
    stored = json.loads(client.get(cells.record_key(record["version"])))
    client.set(cells.record_key(record["version"]), json.dumps({**stored, "name": "notebook.renamed"}))
    renamed = app.send_task("notebook.renamed", headers={cells.HEADER: record["version"]})
    with pytest.raises(cells.CellRefused, match="signature does not verify"):
        renamed.get(timeout=30)


def test_decorated_cell_runs_on_worker_process(ip):
    cell = ("import os\ndef tagged(f):\n    def wrapper(x):\n        return [f(x), os.getpid()]\n"
            "    return wrapper\n\n@tagged\ndef work(x):\n    return x * 10\n")
    ip.run_cell_magic("celery_task", "", cell)
    value, pid = ip.user_ns["work"].delay(4).get(timeout=30)
    assert value == 40 and pid != os.getpid()


def test_missing_module_names_module_and_worker(ip, tmp_path, monkeypatch):
    (tmp_path / "kernel_only_module.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ip.run_cell_magic("celery_task", "", "import kernel_only_module\ndef uses_it():\n    return kernel_only_module.VALUE\n")
    with pytest.raises(Exception, match=r"imports 'kernel_only_module', which worker up\d+-1@\S+ cannot import"):
        ip.user_ns["uses_it"].delay().get(timeout=30)


def test_worker_without_key_refuses(ip, up_cluster, tmp_path):
    ip.run_cell_magic("celery_task", "--queue keyless", "def secret():\n    return 'ran'\n")
    env = dict(os.environ, CELERY_BROKER_URL=up_cluster["url"], CELERY_RESULT_BACKEND=up_cluster["url"],
               CELERYNB_RUNTIME_DIR=str(tmp_path / "elsewhere"))
    env.pop(cells.KEY_ENV, None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celerynb.workers.celery_app", "worker", "--pool", "solo",
         "--queues", "keyless", "--hostname", "keyless@%h", "--without-mingle", "--without-gossip",
         "--logfile", str(tmp_path / "keyless.log")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with pytest.raises(Exception, match="holds no cell key"):
            ip.user_ns["secret"].delay().get(timeout=30)
    finally:
        worker.terminate()
        worker.wait(30)


def test_thousand_calls_spread_over_both_processes(ip):
    ip.run_cell_magic("celery_task", "", "import os\ndef square(x):\n    return [x * x, os.getpid()]\n")
    results = [ip.user_ns["square"].delay(i) for i in range(1000)]
    values = [r.get(timeout=60) for r in results]
    assert [v[0] for v in values] == [i * i for i in range(1000)]
    assert len({v[1] for v in values}) == 2


def test_status_says_which_workers_accept_cells(ip):
    text = repr(ip.run_line_magic("celery", "status"))
    assert "accepts cell tasks" in text


def _sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns_host():
    """A second "host": a network namespace joined to this one by a veth pair."""
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"cnb{tag}", f"cnbh{tag}", f"cnbn{tag}"
    net = f"10.213.{os.getpid() % 250}"
    made = _sh("ip", "netns", "add", ns)
    if made.returncode != 0:
        pytest.skip(f"this sandbox refuses `ip netns add`: {made.stderr.strip()}")
    try:
        for cmd in (
            ("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if),
            ("ip", "link", "set", ns_if, "netns", ns),
            ("ip", "addr", "add", f"{net}.1/30", "dev", host_if),
            ("ip", "link", "set", host_if, "up"),
            ("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", ns_if),
            ("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"),
            ("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"),
        ):
            done = _sh(*cmd)
            if done.returncode != 0:
                pytest.skip(f"cannot build the test network ({' '.join(cmd)}): {done.stderr.strip()}")
        yield {"ns": ns, "host_ip": f"{net}.1", "ns_if": ns_if, "host_if": host_if}
    finally:
        _sh("ip", "netns", "del", ns)
        _sh("ip", "link", "del", host_if)


def test_worker_on_another_host_runs_cell_tasks(app, netns_host, tmp_path, monkeypatch):
    """A worker in its own network namespace reaches the broker over a veth pair, as a second
    machine would, and runs a cell task with the key it was given."""
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    import celerynb
    from celerynb.cluster.server import EmbeddedServer

    key = "k" * 64
    monkeypatch.setenv(cells.KEY_ENV, key)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    server = EmbeddedServer(extra_bind=[netns_host["host_ip"]]).start()
    remote_url = server.url.replace("127.0.0.1", netns_host["host_ip"])
    worker = None
    shell = new_shell()
    try:
        celerynb.connect(server.url, workers=False)
        shell.run_line_magic("load_ext", "celerynb")
        shell.run_cell_magic(
            "celery_task", "--queue remote-host",
            "def interfaces():\n    with open('/proc/net/dev') as f:\n"
            "        return sorted(line.split(':')[0].strip() for line in f.readlines()[2:])\n",
        )
        env = dict(os.environ, CELERY_BROKER_URL=remote_url, CELERY_RESULT_BACKEND=remote_url,
                   CELERYNB_CELL_KEY=key, CELERYNB_RUNTIME_DIR=str(tmp_path / "remote"))
        worker = subprocess.Popen(
            ["ip", "netns", "exec", netns_host["ns"], sys.executable, "-m", "celery", "-A",
             "celerynb.workers.celery_app", "worker", "--pool", "solo", "--queues", "remote-host",
             "--hostname", "remote@%h", "--without-mingle", "--without-gossip",
             "--logfile", str(tmp_path / "remote.log")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        seen = shell.user_ns["interfaces"].delay().get(timeout=60)
        assert netns_host["ns_if"] in seen and netns_host["host_if"] not in seen
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        shell.run_line_magic("unload_ext", "celerynb")
        app.tasks.pop("notebook.interfaces", None)
        TerminalInteractiveShell.clear_instance()
        server.stop()


def test_hard_time_limit_alone_lowers_the_soft_limit(ip):
    """``--time-limit 5`` below the app's soft limit (3300 s): the cell still runs (every call
    used to fail with "soft_time_limit must be less than or equal to time_limit")."""
    ip.run_cell_magic("celery_task", "--time-limit 5", "import os\ndef quick():\n    return os.getpid()\n")
    task = ip.user_ns["quick"]
    assert task.delay().get(timeout=30) != os.getpid()
    assert (task.time_limit, task.soft_time_limit) == (5, 5)


def test_hard_time_limit_ends_a_cell_that_runs_too_long_on_a_prefork_worker(ip):
    """Stopped at its limit instead of returning "woke". Which of the two exceptions it ends
    with is a race in Celery's prefork pool: with soft == hard it signals the soft limit first
    and kills 0 s later, and the task may store its SoftTimeLimitExceeded before the kill."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    ip.run_cell_magic("celery_task", "--time-limit 1", "import time\ndef sleepy():\n    time.sleep(5)\n    return 'woke'\n")
    with pytest.raises((TimeLimitExceeded, SoftTimeLimitExceeded)):
        ip.user_ns["sleepy"].delay().get(timeout=30)
