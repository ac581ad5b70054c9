"""Shipped cells come back on demand: a record that expired, was evicted or was lost with a
server restart is stored again by the kernel that defined it, and a worker process waiting
for it finds it; a record nobody stores again fails with a one-line reason.

Worker processes are a module-wide ``celerynb up --detach`` (see ``test_cell_shipping.py``).
"""

from __future__ import annotations

import uuid

import pytest
import test_cell_shipping
from conftest import new_shell, wait_for

from celerynb.tracking.monitor import get_monitor
from celerynb.workers import cell_records, cells

pytestmark = pytest.mark.slow

up_cluster, ip = test_cell_shipping.up_cluster, test_cell_shipping.ip  # its fixtures: worker processes


def _fresh_cell(ip, body: str = "return 'ran'"):
    """A cell no worker process has loaded yet (a unique source is a unique version)."""
    ip.run_cell_magic("celery_task", "", f"def fresh():\n    # {uuid.uuid4()}\n    {body}\n")
    task = ip.user_ns["fresh"]
    return task, cells.record_key(task._celerynb_record["version"])


def test_a_server_restart_seen_by_the_monitor_stores_this_kernels_cells_again(app, tmp_path, monkeypatch):
    """First in this module: the module's ``celerynb up`` would otherwise be the cluster found."""
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    import celerynb

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    cluster = celerynb.LocalCluster(workers=0, processes=1).start()
    shell = new_shell()
    shell.run_line_magic("load_ext", "celerynb")
    try:
        task, key = _fresh_cell(shell)
        assert task.delay().get(timeout=60) == "ran"
        monitor = get_monitor(app)
        waiting = task.apply_async(countdown=600)  # keeps the monitor following the server
        monitor.track([waiting.id])
        wait_for(lambda: monitor.connected, timeout=10, message="the monitor to connect")
        cluster.server.stop()
        cluster.server.start()  # same port and password, no persistence: the record is gone
        wait_for(lambda: _exists(cluster.server.url, key), timeout=30, message="the record stored again")
    finally:
        shell.run_line_magic("unload_ext", "celerynb")
        for name in [n for n in list(app.tasks) if n.startswith("notebook.")]:
            app.tasks.pop(name, None)
        TerminalInteractiveShell.clear_instance()
        cluster.stop()


def _exists(url: str, key: str) -> bool:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return bool(client.exists(key))
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_a_vanished_record_is_stored_again_by_the_next_submission(ip, app, monkeypatch):
    monkeypatch.setattr(cell_records, "CHECK_EVERY", 0.0)  # every submission checks (default: every 2 s)
    task, key = _fresh_cell(ip)
    cells.ship(app, task._celerynb_record)  # the kernel's first submission stored it...
    client = app.backend.client
    assert client.delete(key) == 1  # ...then it expired, was evicted, or a restart lost it
    assert task.delay().get(timeout=30) == "ran"
    assert client.ttl(key) > cell_records.RECORD_TTL - 60


def test_a_worker_waits_for_a_record_its_kernel_stores_again(ip, app):
    task, key = _fresh_cell(ip)
    cells.ship(app, task._celerynb_record)
    app.backend.client.delete(key)  # lost; the next check is 2 s away, so this send ships nothing
    result = task.delay()
    wait_for(lambda: result.state == "STARTED", timeout=10, message="the worker to wait for the record")
    assert cells.ship_again(app) >= 1  # what the monitor does when it sees the server restarted
    assert result.get(timeout=30) == "ran"


def test_a_record_nobody_stores_again_fails_in_one_line(ip, app):
    version = uuid.uuid4().hex
    result = app.send_task("notebook.never_stored", headers={cells.HEADER: version})
    with pytest.raises(Exception) as failed:
        result.get(timeout=30)
    message = str(failed.value)
    assert type(failed.value).__name__ == "CellRefused"
    assert version in message and "run the cell again in its notebook" in message and "\n" not in message
