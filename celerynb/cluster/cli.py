"""``celerynb up | status | down``: a cluster that outlives a kernel, found by a discovery file.

``celerynb up`` starts the embedded server (plus worker processes and beat if asked) and
writes a user-only discovery file; kernels, scripts and ``celery -A celerynb.workers.celery_app
worker`` then find it with no configuration, as Jupyter clients find kernels.

It holds the runtime directory's cluster lock for its whole life, and its children die with it
(even when it is killed). A file left by a cluster that is gone is stale: each command says so
in one line, removes it and carries on; nothing is signalled unless it still is the very process
the file recorded (a PID alone may have been reused by a stranger).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from celerynb import config
from celerynb.cluster import spawn
from celerynb.cluster.processes import WorkerProcess, WorkerProcessError
from celerynb.cluster.server import EmbeddedServer, ServerError
from celerynb.config import discovery, reachability, scratch
from celerynb.config.identity import signal_if_same

READY_TIMEOUT = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celerynb", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the embedded server (and workers) and write the discovery file")
    up.add_argument("--workers", type=int, default=0, metavar="N", help="worker processes to start (default 0)")
    up.add_argument("--concurrency", type=int, default=2, metavar="N", help="prefork children per worker process")
    up.add_argument("--beat", action="store_true", help="also run celery beat on the app's schedule")
    up.add_argument("--persistent", action="store_true", help="keep queued messages across server restarts (AOF)")
    up.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    up.add_argument("--app", default="celerynb.workers.celery_app", help="Celery app for the workers (celery -A)")
    up.add_argument("--detach", action="store_true", help="run in the background and return once ready")
    sub.add_parser("status", help="show the running cluster")
    down = sub.add_parser("down", help="stop what `celerynb up` started")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a clean stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"up": _up, "status": _status, "down": _down}[args.command](args)
    except (ServerError, WorkerProcessError, RuntimeError) as exc:
        print(f"celerynb {args.command}: {config.mask_text(str(exc))}", file=sys.stderr)
        return 1


# -- up ------------------------------------------------------------------------------------
def _up(args: argparse.Namespace) -> int:
    state, existing = discovery.discovery_state()
    if state == discovery.STALE:
        _say_stale("up", existing)
    elif state == discovery.RUNNING:
        print(
            f"celerynb up: a cluster is already running ({config.mask_url(existing['url'])}, pid "
            f"{existing.get('up_pid')}). Stop it with `celerynb down`.",
            file=sys.stderr,
        )
        return 1
    if args.detach:
        return _up_detached(args)
    return _up_foreground(args)


def _up_detached(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "celerynb", "up", "--workers", str(args.workers),
            "--concurrency", str(args.concurrency), "--app", args.app]
    argv += ["--beat"] * args.beat + ["--persistent"] * args.persistent
    if args.port:
        argv += ["--port", str(args.port)]
    log_path = config.runtime_dir() / "celerynb-up.log"
    with open(log_path, "ab") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        record = config.read_discovery()
        if record and record.get("up_pid") == child.pid and record.get("ready"):
            _print_record(record)
            return 0
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            print("celerynb up: the cluster failed to start:\n  " + "\n  ".join(tail), file=sys.stderr)
            return 1
        time.sleep(0.05)
    child.terminate()
    print(f"celerynb up: not ready within {READY_TIMEOUT:.0f} s; see {log_path}", file=sys.stderr)
    return 1


def _up_foreground(args: argparse.Namespace) -> int:
    lock = discovery.hold_cluster_lock()  # held until this process ends, however it ends
    try:
        return _run_cluster(args)
    finally:
        if lock is not None:
            os.close(lock)


def _run_cluster(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    data_dir = config.persistent_data_dir("up") if args.persistent else None
    server = EmbeddedServer(port=args.port, persistent=args.persistent, data_dir=data_dir).start()
    cell_key = secrets.token_hex(32)  # workers verify shipped notebook cells with it
    log_dir = scratch.make_scratch_dir("up")
    record = discovery.with_identities({
        "url": server.url,
        "server_pid": server.pid,
        "up_pid": os.getpid(),
        "port": server.port,
        "app": args.app,
        "log_dir": str(log_dir),
        "started": time.time(),
        "workers": [],
        "ready": False,
        "cell_key": cell_key,
    }, os.getpid(), server.pid)
    config.write_discovery(record)
    workers: list[WorkerProcess] = []
    beat: subprocess.Popen | None = None
    try:
        from celerynb.workers.celery_app import app
        from celerynb.workers.urls import apply

        apply(app, server.url, server.url, "discovery")
        for i in range(args.workers):
            proc = WorkerProcess(
                app_path=args.app, broker_url=server.url, result_backend=server.url,
                name=f"up{os.getpid()}-{i + 1}@{_host()}", concurrency=args.concurrency,
                logfile=str(log_dir / f"worker-{i + 1}.log"),
                extra_env={"CELERYNB_CELL_KEY": cell_key},
            )
            workers.append(proc)
            proc.start(app)
            record["workers"].append({"name": proc.name, "pid": proc.pid, "log": proc.logfile})
            discovery.with_identities(record, proc.pid)
        if args.beat:
            beat = _start_beat(args.app, server.url, log_dir)
            record["beat_pid"] = beat.pid
            discovery.with_identities(record, beat.pid)
        record["ready"] = True
        config.write_discovery(record)
        print(f"celerynb up: {config.mask_url(server.url)} ready (pid {os.getpid()})", flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print("celerynb up: the server exited; stopping", file=sys.stderr, flush=True)
                break
    finally:
        if beat is not None and beat.poll() is None:
            beat.terminate()
            try:
                beat.wait(10)
            except subprocess.TimeoutExpired:
                beat.kill()
        for proc in workers:
            proc.stop()
        server.stop()
        config.remove_discovery(expected_pid=os.getpid())
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def _start_beat(app_path: str, url: str, log_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url)
    cmd = [sys.executable, "-m", "celery", "-A", app_path, "beat", "--loglevel", "INFO",
           "--schedule", str(log_dir / "beat-schedule"), "--logfile", str(log_dir / "beat.log")]
    return spawn.popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True)  # dies with this process


def _host() -> str:
    import socket

    return socket.gethostname()


def _print_record(record: dict) -> None:
    print(f"celerynb cluster: {config.mask_url(record['url'])}")
    print(f"  pid {record.get('up_pid')}, server pid {record.get('server_pid')}")
    for worker in record.get("workers", []):
        print(f"  worker {worker['name']} (pid {worker['pid']}), log {worker['log']}")
    if record.get("beat_pid"):
        print(f"  beat pid {record['beat_pid']}")
    print(f"  discovery file {config.discovery_path()}")


# -- status / down ---------------------------------------------------------------------------
def _say_stale(command: str, record: dict | None) -> None:
    """One line: the discovery file named a cluster that is gone; removed (or, if racing, ignored)."""
    action = "removed" if discovery.remove_stale_discovery() else "ignored"
    print(f"celerynb {command}: {action} a stale discovery file ({discovery.stale_reason(record)}).")


def _status(args: argparse.Namespace) -> int:
    state, record = discovery.discovery_state()
    if state == discovery.STALE:
        _say_stale("status", record)
    if state != discovery.RUNNING:
        print("No celerynb cluster is running. Start one with `celerynb up --detach`.")
        return 1
    _print_record(record)
    from celerynb.cluster.queues import queue_lengths
    from celerynb.workers.celery_app import app
    from celerynb.workers.urls import apply

    try:
        reachability.check(record["url"])  # one attempt: no retries, no traceback
    except reachability.BrokerUnreachable as exc:
        print(f"  queues: the server does not answer ({exc})")
        return 1
    apply(app, record["url"], record["url"], "discovery")
    lengths = queue_lengths(app, sorted(q.name for q in app.amqp.queues.values()))
    print("  queues " + ", ".join(f"{name}: {n}" for name, n in lengths.items()))
    return 0


def _down(args: argparse.Namespace) -> int:
    state, record = discovery.discovery_state()
    if state == discovery.ABSENT:
        print("No celerynb cluster is running.")
        return 0
    if state == discovery.STALE:
        leftovers = _kill_ours(record or {}, signal.SIGKILL)
        _say_stale("down", record)
        if leftovers:
            print(f"celerynb down: stopped {leftovers} process(es) it had left running.")
        return 0
    up_pid, server_pid = record["up_pid"], record.get("server_pid")
    _kill_ours(record, signal.SIGTERM, [up_pid])
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and any(discovery.record_has(record, pid) for pid in (up_pid, server_pid)):
        time.sleep(0.05)
    _kill_ours(record, signal.SIGKILL)
    config.remove_discovery(expected_pid=up_pid)
    print(f"celerynb down: stopped {config.mask_url(record['url'])}")
    return 0


def _kill_ours(record: dict, sig: int, pids: list[int] | None = None) -> int:
    """Signal the record's processes that still are the ones it recorded; returns how many."""
    identities = record.get("identities") or {}
    targets = discovery.record_pids(record) if pids is None else pids
    return sum(signal_if_same(pid, identities.get(str(pid)), sig) for pid in targets)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
