"""Lifecycle faults (issue 14): stale discovery files naming strangers, restarts that must keep
what ``persistent`` promises, kernels killed with SIGKILL, and the server password on a command line.

Real ``celerynb up`` processes, real kernels, real servers and real signals; every process a
test starts is stopped by PID. The figures each test measures (seconds to clean up, messages
kept) are printed with ``-s``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import no_broker_env as _env
from conftest import process_gone as _gone
from conftest import run_without_broker as run
from conftest import wait_for

import celerynb
from celerynb import config
from celerynb.cluster import server
from celerynb.cluster.queues import queue_lengths
from celerynb.config import discovery, scratch
from celerynb.workers import tasks, urls

from _kernel import Kernel

pytestmark = pytest.mark.reliability

CELERYNB = [sys.executable, "-m", "celerynb"]
CLEANUP_TARGET = 5.0  # seconds within which a dead owner's processes must be gone


def _tree(pid: int) -> set[int]:
    try:
        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture
def no_cluster():
    """Nothing is up before the test; whatever the test brought up is brought down after it."""
    assert config.read_discovery() is None, "a cluster from another test is still up"
    yield
    if config.read_discovery() is not None:
        run(CELERYNB + ["down"], timeout=60)


@pytest.fixture
def strangers():
    """Start unrelated processes on demand (``sleep``); all are killed by PID after the test."""
    started: list[subprocess.Popen] = []

    def start(count: int) -> list[subprocess.Popen]:
        procs = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


# -- 1. a stale discovery file whose PIDs now belong to strangers -------------------------------
def _forge(record: dict, pids: list[int]) -> dict:
    """The record as PID reuse leaves it: the same identities, but its PIDs now name ``pids``."""
    old = discovery.record_pids(record)
    assert len(old) == len(pids)
    mapping = dict(zip(old, pids, strict=True))
    forged = json.loads(json.dumps(record))
    forged["up_pid"], forged["server_pid"] = mapping[record["up_pid"]], mapping[record["server_pid"]]
    for worker in forged["workers"]:
        worker["pid"] = mapping[worker["pid"]]
    if record.get("beat_pid"):
        forged["beat_pid"] = mapping[record["beat_pid"]]
    forged["identities"] = {str(mapping[int(pid)]): ident for pid, ident in record["identities"].items()}
    return forged


@pytest.mark.slow
def test_killed_up_leaves_a_stale_file_that_harms_no_stranger(no_cluster, strangers, capsys):
    up = run(CELERYNB + ["up", "--detach", "--workers", "1", "--beat"])
    assert up.returncode == 0, up.stderr
    record = config.read_discovery()
    ours = set().union(*(_tree(pid) for pid in discovery.record_pids(record)))
    assert len(ours) >= 5  # up, server, worker + its prefork children, beat
    log_dir = Path(record["log_dir"])
    assert log_dir.parent == scratch.scratch_root()

    # `celerynb up` dies without a word: its children must follow it.
    start = time.monotonic()
    os.kill(record["up_pid"], signal.SIGKILL)
    wait_for(lambda: all(_gone(pid) for pid in ours), timeout=CLEANUP_TARGET, message=f"{sorted(ours)} to exit")
    cleanup = time.monotonic() - start
    assert config.discovery_path().exists() and log_dir.exists()  # nobody was left to remove them

    # Its PIDs are reused by unrelated processes: every command must see the file as stale.
    victims = strangers(len(discovery.record_pids(record)))
    forged = _forge(record, [p.pid for p in victims])
    outcomes = {}
    for command in (["status"], ["down"]):
        config.write_discovery(forged)
        done = run(CELERYNB + command, timeout=60)
        outcomes[command[0]] = done
        assert "Traceback" not in done.stdout + done.stderr
        assert f"removed a stale discovery file (its `celerynb up` (pid {forged['up_pid']}) is gone" in done.stdout
        assert not config.discovery_path().exists()
        assert all(p.poll() is None for p in victims), f"`celerynb {command[0]}` killed a stranger"
    assert outcomes["status"].returncode == 1 and "No celerynb cluster is running" in outcomes["status"].stdout
    assert outcomes["down"].returncode == 0

    # A kernel's first task ignores the file (saying so once) and runs on its own embedded server.
    config.write_discovery(forged)
    kernel = Kernel()
    try:
        reply = kernel.run("from celerynb.workers import tasks\n"
                           "print(tasks.analyze_content.delay('two words').get(timeout=60)['words'])", timeout=120)
    finally:
        kernel.shutdown()
    assert reply.status == "ok" and reply.stdout.strip() == "2", reply.error or reply.stderr
    assert reply.stderr.count("stale discovery file") == 1
    assert all(p.poll() is None for p in victims)
    assert not log_dir.exists()  # the kernel's start swept the dead cluster's temporary files

    # `celerynb up` carries on.
    config.write_discovery(forged)
    again = run(CELERYNB + ["up", "--detach"])
    assert again.returncode == 0, again.stderr
    assert "removed a stale discovery file" in again.stdout
    assert config.read_discovery()["up_pid"] != forged["up_pid"]
    assert run(CELERYNB + ["down"], timeout=60).returncode == 0
    assert all(p.poll() is None for p in victims)
    with capsys.disabled():
        print(f"\n[lifecycle] killed `celerynb up`: its {len(ours)} processes gone in {cleanup:.2f} s; "
              f"strangers killed: 0/{len(victims)}")


def test_up_refuses_while_another_holds_the_cluster_lock(no_cluster):
    lock = discovery.hold_cluster_lock()
    try:
        done = run(CELERYNB + ["up"], timeout=60)
    finally:
        os.close(lock)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "another `celerynb up` is running or starting" in done.stderr
    assert not config.discovery_path().exists()


def test_status_of_a_running_cluster_whose_server_does_not_answer_is_one_line(no_cluster):
    lock = discovery.hold_cluster_lock()  # this process plays a live `celerynb up`
    try:
        record = {"url": f"redis://:pw-never-shown@127.0.0.1:{server.free_port()}/0", "up_pid": os.getpid(),
                  "server_pid": os.getpid(), "workers": []}
        config.write_discovery(discovery.with_identities(record, os.getpid()))
        done = run(CELERYNB + ["status"], timeout=60)
    finally:
        os.close(lock)
        config.remove_discovery()
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "queues: the server does not answer" in done.stdout and "pw-never-shown" not in done.stdout


# -- 2. persistence across the restarts a user can do -------------------------------------------
def _count(app, queue: str) -> int:
    return queue_lengths(app, [queue])[queue]


@pytest.mark.slow
def test_stop_then_start_persistent_keeps_every_queued_message(app, capsys):
    server.stop_shared_server()  # a plain one left by an earlier test would (rightly) be refused
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    cluster = celerynb.start(persistent=True, workers=0)
    data_dir = cluster.server.data_dir
    try:
        ids = [tasks.analyze_content.apply_async(("some words",), queue=queue).id for _ in range(100)]
        assert _count(app, queue) == 100
        celerynb.stop()
        cluster = celerynb.start(persistent=True, workers=0)
        kept = _count(app, queue)
        assert kept == 100
        cluster.add_worker(queues=[queue])
        values = [app.AsyncResult(task_id).get(timeout=60) for task_id in ids]
        assert all(v["words"] == 2 for v in values)
        # one stable, private place, not a new temporary directory per start
        assert cluster.server.data_dir == data_dir == config.persistent_data_dir("embedded")
    finally:
        celerynb.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    with capsys.disabled():
        print(f"\n[lifecycle] stop() + start(persistent=True): {kept}/100 queued messages kept, "
              f"{len(values)}/100 ran")


def test_persistent_start_while_a_plain_server_runs_is_refused_and_changes_nothing(app):
    server.stop_shared_server()
    plain = server.shared_server()  # e.g. started on demand by a first task
    try:
        with pytest.raises(server.ServerError, match=r"without persistence: stop it first with celerynb\.stop\(\)"):
            celerynb.start(persistent=True)
        assert plain.running and server.shared_server(start=False) is plain and celerynb.current() is None
    finally:
        server.stop_shared_server()
    cluster = celerynb.start()
    with pytest.raises(celerynb.ClusterError, match=r"already running: stop it first"):
        celerynb.start(persistent=True)
    assert celerynb.current() is cluster and cluster.server.running and not cluster.server.persistent
    assert celerynb.start() is cluster  # plain get-or-create is unchanged


@pytest.mark.slow
def test_down_then_up_persistent_keeps_every_queued_message(no_cluster, app, capsys):
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    data_dir = config.persistent_data_dir("up")
    try:
        assert run(CELERYNB + ["up", "--detach", "--persistent"]).returncode == 0
        urls.forget(app)
        urls.resolve_into(app)
        for _ in range(20):
            tasks.analyze_content.apply_async(("x",), queue=queue)
        assert _count(app, queue) == 20
        assert run(CELERYNB + ["down"], timeout=60).returncode == 0
        assert run(CELERYNB + ["up", "--detach", "--persistent"]).returncode == 0
        urls.forget(app)
        urls.resolve_into(app)
        kept = _count(app, queue)
        assert kept == 20
        assert (data_dir / "appendonlydir").is_dir()
    finally:
        urls.forget(app)
        run(CELERYNB + ["down"], timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    with capsys.disabled():
        print(f"\n[lifecycle] `celerynb down` + `up --persistent`: {kept}/20 queued messages kept")


def test_non_persistent_servers_leave_no_data_dir(no_cluster, app):
    srv = server.EmbeddedServer().start()
    data_dir = srv.data_dir
    assert data_dir.parent == scratch.scratch_root() and (data_dir / "server.log").exists()
    srv.stop()
    assert not data_dir.exists()

    cluster = celerynb.start()
    dirs = [cluster.server.data_dir, Path(cluster.log_dir)]
    assert all(d.parent == scratch.scratch_root() for d in dirs)
    celerynb.stop()
    assert not any(d.exists() for d in dirs)

    assert run(CELERYNB + ["up", "--detach"]).returncode == 0
    record = config.read_discovery()
    up_dirs = [p for p in scratch.scratch_root().iterdir() if f"-{record['up_pid']}-" in p.name]
    assert len(up_dirs) == 2  # its log dir and its server's
    assert run(CELERYNB + ["down"], timeout=60).returncode == 0
    assert not any(d.exists() for d in up_dirs)
    assert not (config.runtime_dir() / "celerynb-data" / "up").exists()


def test_second_persistent_server_on_one_data_dir_is_refused(tmp_path):
    first = server.EmbeddedServer(persistent=True, data_dir=tmp_path / "data").start()
    try:
        with pytest.raises(server.ServerError, match="in use by another server") as info:
            server.EmbeddedServer(persistent=True, data_dir=tmp_path / "data").start()
        assert str(tmp_path / "data") in str(info.value) and "persistent=True" in str(info.value)
        assert first.ping()
    finally:
        first.stop()
    again = server.EmbeddedServer(persistent=True, data_dir=tmp_path / "data").start()  # free again
    again.stop()


# -- 3. a kernel killed with SIGKILL --------------------------------------------------------------
_BUSY_CLUSTER = textwrap.dedent(
    """
    import json, os, time
    import celerynb
    from celerynb.workers import tasks
    cluster = celerynb.current()
    busy = tasks.long_process.delay([0], delay=120)  # no backend call while it sleeps
    deadline = time.monotonic() + 60
    while busy.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"state": busy.state, "server": cluster.server.pid, "worker": cluster.processes[0].pid,
                      "dirs": [str(cluster.server.data_dir), cluster.log_dir]}))
    """
)


@pytest.mark.slow
def test_sigkilled_kernel_stops_its_cluster_within_seconds_and_its_files_are_swept(capsys):
    kernel = Kernel()
    popen = kernel.km.provisioner.process
    try:
        assert kernel.run("%load_ext celerynb").status == "ok"
        started = kernel.run("%celery start --workers 0 --processes 1", timeout=120)
        assert started.status == "ok", started.error
        reply = kernel.run(_BUSY_CLUSTER, timeout=120)
        assert reply.status == "ok", reply.error
        info = json.loads(reply.stdout.strip().splitlines()[-1])
        assert info["state"] == "STARTED"
        ours = {info["server"]} | _tree(info["worker"])
        assert len(ours) >= 3  # the server, the worker process and its prefork child (running the task)
        dirs = [Path(d) for d in info["dirs"]]
        assert all(d.parent == scratch.scratch_root() and d.exists() for d in dirs)

        start = time.monotonic()
        os.kill(kernel.pid, signal.SIGKILL)  # what jupyter_client does when a polite shutdown times out
        wait_for(lambda: all(_gone(pid) for pid in ours), timeout=CLEANUP_TARGET,
                 message=f"the killed kernel's processes {sorted(ours)} to exit")
        cleanup = time.monotonic() - start
        assert popen.wait(timeout=10) == -signal.SIGKILL
    finally:
        kernel.kc.stop_channels()
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        kernel.km.cleanup_resources()
    assert all(d.exists() for d in dirs)  # a killed process cleans nothing: the next start does

    live = server.EmbeddedServer().start()  # the next start sweeps the dead kernel's files...
    try:
        assert not any(d.exists() for d in dirs)
        scratch.sweep()  # ...and never a live owner's
        assert live.data_dir.exists()
    finally:
        live.stop()
    with capsys.disabled():
        print(f"\n[lifecycle] SIGKILLed kernel: its {len(ours)} processes (one mid-task) gone in {cleanup:.2f} s; "
              f"{len(dirs)} temporary dirs swept by the next start")


# -- 4. the password never on a command line ------------------------------------------------------
class CommandLineWatcher(threading.Thread):
    """Reads the command line of every descendant of this process, as any local user could."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.is_set():
            for child in me.children(recursive=True):
                try:
                    with open(f"/proc/{child.pid}/cmdline", "rb") as fh:
                        self.seen.add(fh.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    continue
            time.sleep(0.001)


_PLUGIN_TEST = '''
import os


def test_records_the_password(celerynb_cluster):
    with open(os.environ["PASSWORD_FILE"], "a") as fh:
        fh.write(celerynb_cluster.server.password + "\\n")
'''


def _noauth_without_password(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(128).startswith(b"-NOAUTH")


def test_no_server_we_start_has_the_password_on_its_command_line(no_cluster, tmp_path, monkeypatch):
    argv_log = tmp_path / "argv.log"
    wrapper = tmp_path / "valkey-server"  # records its arguments, then becomes the real server
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv_log}"\nexec "{server.valkey_executable()}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CELERYNB_SERVER_BINARY", str(wrapper))
    passwords: list[str] = []
    watcher = CommandLineWatcher()
    watcher.start()
    try:
        for _ in range(15):  # embedded servers
            srv = server.EmbeddedServer().start()
            try:
                passwords.append(srv.password)
                assert _noauth_without_password(srv.port) and srv.ping()
            finally:
                srv.stop()

        up = run(CELERYNB + ["up", "--detach"])  # `celerynb up`
        assert up.returncode == 0, up.stderr
        record = config.read_discovery()
        passwords.append(record["url"].split(":")[2].split("@")[0])
        assert _noauth_without_password(record["port"])
        assert run(CELERYNB + ["down"], timeout=60).returncode == 0

        (tmp_path / "test_user.py").write_text(_PLUGIN_TEST)  # the pytest plugin's server
        password_file = tmp_path / "passwords.txt"
        inner = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "celerynb.testing", "-p", "no:cacheprovider", "-q", "test_user.py"],
            cwd=tmp_path, capture_output=True, text=True, timeout=180, env=_env(PASSWORD_FILE=str(password_file)),
        )
        assert inner.returncode == 0, inner.stdout[-2000:]
        passwords += password_file.read_text().split()
    finally:
        watcher.done.set()
        watcher.join(10)
    invocations = argv_log.read_text().splitlines()
    assert len(invocations) == 17 and len(passwords) == 17

    def leaks(lines) -> int:  # counted, never shown: a failure message must not print a password
        return sum(1 for line in lines if "requirepass" in line or any(pw in line for pw in passwords))

    in_argv, in_proc = leaks(invocations), leaks(watcher.seen)
    assert watcher.seen
    assert (in_argv, in_proc) == (0, 0), (
        f"a password was on the command line of {in_argv}/17 servers (their arguments) and in "
        f"{in_proc} command line(s) read from /proc"
    )
