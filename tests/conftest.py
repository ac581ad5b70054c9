"""Shared fixtures: a private runtime dir, real servers, and a check that nothing is left running.

Every test session gets its own ``CELERYNB_RUNTIME_DIR`` so that no test ever sees (or
stops) a user's ``celerynb up`` cluster; processes that carry that directory in their
environment are ours, and the session fails if any survives it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="celerynb-tests-"))
os.environ["CELERYNB_RUNTIME_DIR"] = str(_SESSION_DIR / "runtime")
os.environ["CELERYNB_DOCUMENTS_DIR"] = str(_SESSION_DIR / "documents")
os.environ["CELERYNB_NONINTERACTIVE"] = "1"
for _var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"):
    os.environ.pop(_var, None)

REDIS_URL = "redis://127.0.0.1:6379/{db}"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def our_processes() -> list[psutil.Process]:
    """Live processes started by this session: children, and detached ones with our runtime dir."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    marker = os.environ["CELERYNB_RUNTIME_DIR"]
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info.get("environ") or {}
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if env.get("CELERYNB_RUNTIME_DIR") == marker and proc.pid != me.pid:
            found[proc.pid] = proc
    alive = []
    for proc in found.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def no_broker_env(**extra: str) -> dict[str, str]:
    """This session's environment (private runtime dir) with no broker configured, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")}
    return {**env, **extra}


def run_without_broker(cmd: list[str], timeout: float = 90, **extra_env: str) -> subprocess.CompletedProcess:
    """Run a command (``celerynb up``, ``celery ...``) in :func:`no_broker_env`; output captured."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=no_broker_env(**extra_env))


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def command_calls(url: str) -> dict[str, int]:
    """How many times the server at ``url`` ran each command so far (``INFO commandstats``).

    Only meaningful on a server private to this session (the embedded one): there, every
    command counted was sent by this test run, and the difference of two readings is what
    the code in between sent."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def commands_sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two :func:`command_calls` readings (only those run at least once)."""
    return {name: after[name] - before.get(name, 0) for name in after if after[name] > before.get(name, 0)}


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture
def app():
    """celerynb's app; the local cluster is stopped after the test."""
    import celerynb
    from celerynb.workers.celery_app import app as celery_app

    yield celery_app
    celerynb.stop()
    celery_app.conf.task_always_eager = False
    from celerynb.workers import urls

    urls.forget(celery_app)  # the next test resolves its broker afresh


@pytest.fixture
def kernel():
    """A real Jupyter kernel (``tests/_kernel.py``), shut down after the test."""
    from _kernel import Kernel

    k = Kernel()
    yield k
    if k.km.is_alive():
        k.shutdown()


@pytest.fixture
def cluster(app):
    """A running local cluster on the embedded server (threads pool)."""
    import celerynb

    yield celerynb.start()


@contextlib.contextmanager
def registered(app, fun, name: str, **options):
    """``fun`` as the task ``name`` of ``app`` inside the block, and on no app after it.

    For tests' own tasks: registered in a fixture rather than at import, so that importing a
    test module registers nothing. Not shared (``shared=False``): Celery would otherwise add
    a shared task to every app created later in the process."""
    tasks = app.tasks  # finalizes the app: the task is made now, not a lazy proxy
    assert name not in tasks, f"{name} is already registered on {app.main}"
    task = app.task(name=name, shared=False, **options)(fun)
    try:
        yield task
    finally:
        tasks.pop(name, None)


@contextlib.contextmanager
def own_keys_only(url: str):
    """On a shared server, remove exactly the keys that appeared while the block ran: never a
    FLUSHDB, which would take other people's data with ours."""
    import redis

    client = redis.Redis.from_url(url)
    before = set(client.scan_iter(count=1000))
    try:
        yield client
    finally:
        created = set(client.scan_iter(count=1000)) - before
        for start in range(0, len(created), 500):
            client.delete(*list(created)[start:start + 500])
        client.close()


def xdist_controller(config) -> bool:
    """True in the process that hands tests to pytest-xdist workers (``-n 2``): it runs none itself."""
    return getattr(config, "workerinput", None) is None and bool(getattr(config.option, "numprocesses", None))


_MACHINE_BROKERS_LOCK = Path(tempfile.gettempdir()) / "celerynb-tests-machine-brokers.lock"


@pytest.fixture(autouse=True)
def _one_test_at_a_time_on_the_machines_brokers(request):
    """Tests on the machine's Redis or RabbitMQ share their databases and default queues, and
    :func:`own_keys_only` removes every key that appeared meanwhile: with ``-n 2`` a test there
    holds this lock (``flock``, released by the kernel even if the worker dies) while it runs."""
    uses = {"redis7_url", "rabbitmq_url"} & set(request.fixturenames)
    if not uses and request.node.get_closest_marker("external") is None:
        yield
        return
    import fcntl

    with open(_MACHINE_BROKERS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def redis7_url():
    """The machine's Redis 7 (a database our tests use), skipped where unreachable; the keys a
    test creates there are removed after it, and only those."""
    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
    url = REDIS_URL.format(db=11)
    with own_keys_only(url):
        yield url


@pytest.fixture
def rabbitmq_url():
    if not reachable("127.0.0.1", 5672):
        pytest.skip("RabbitMQ on 127.0.0.1:5672 is not reachable")
    return RABBITMQ_URL


@pytest.fixture
def discovery_cluster(session_dir):
    """``celerynb up --detach --workers 1`` in the test runtime dir; ``celerynb down`` after."""
    import subprocess

    subprocess.run([sys.executable, "-m", "celerynb", "up", "--detach", "--workers", "1"], check=True,
                   capture_output=True, text=True, timeout=90)
    from celerynb import config

    record = config.read_discovery()
    assert record is not None
    yield record
    subprocess.run([sys.executable, "-m", "celerynb", "down"], check=True, capture_output=True, timeout=60)


def pytest_sessionfinish(session, exitstatus):
    if xdist_controller(session.config):  # each worker checks what it started; these are its workers
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)
        return
    import celerynb

    celerynb.stop()
    from celerynb.cluster import server

    server.stop_shared_server()
    deadline = time.monotonic() + 10
    left = our_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = our_processes()
    if left:
        desc = ", ".join(f"{p.pid}:{' '.join(p.cmdline()[:4])}" for p in left)
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        print(f"\nFAILED: the test session left processes running: {desc}", file=sys.stderr)
        session.exitstatus = 1
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def new_shell():
    """A real TerminalInteractiveShell without on-disk history (its IPYTHONDIR is temporary)."""
    from IPython.terminal.interactiveshell import TerminalInteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    return TerminalInteractiveShell.instance(config=config)
