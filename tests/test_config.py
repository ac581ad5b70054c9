"""Configuration resolution (environment -> discovery file -> embedded) and password masking."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
from celery import Celery
from conftest import wait_for

from celerynb import config
from celerynb.cluster import server
from celerynb.config import reachability as connectivity
from celerynb.workers import urls

BROKER_VARS = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private runtime dir and no broker variables."""
    monkeypatch.setenv("CELERYNB_RUNTIME_DIR", str(tmp_path / "runtime"))
    for var in BROKER_VARS:
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "runtime"


@pytest.fixture
def private_server():
    srv = server.EmbeddedServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def live_up(runtime):
    """This process plays a running `celerynb up`: it holds the cluster lock; returns a record writer."""
    from celerynb.config import discovery

    lock = discovery.hold_cluster_lock()

    def write(**record):
        record.setdefault("up_pid", os.getpid())
        return config.write_discovery(discovery.with_identities(record, record["up_pid"]))

    yield write
    os.close(lock)


def _fresh_app() -> Celery:
    """Configured the way ``celerynb.workers.celery_app`` is: resolved on first configuration read."""
    app = Celery("config-test")
    app.config_from_object("celerynb.workers.settings")
    app.on_configure.connect(urls.on_configure, sender=app, weak=False)
    return app


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:s3cret@host:6379/2", "redis://user:***@host:6379/2"),
        ("rediss://default:p%40ss@example.com:6380/0", "rediss://default:***@example.com:6380/0"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379", "sentinel://:***@h1:26379;sentinel://:***@h2:26379"),
        # Passwords pasted as they are: the userinfo ends at the last '@'.
        ("redis://:p@ss@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:pa/ss?w#rd@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:a:b@c@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        # In the query string (redis-py), for a socket too; the username stays.
        ("redis://h:6379/0?username=me&password=s3cret&db=2", "redis://h:6379/0?username=me&password=***&db=2"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("redis://:pw@h/0?password=a@b", "redis://:***@h/0?password=***"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("memory://", "memory://"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_url(url, masked):
    assert config.mask_url(url) == masked


def test_mask_text_masks_every_url_in_a_message():
    text = "Cannot reach redis://:aaa@h:1/0 nor amqp://u:bbb@h:5672//; giving up"
    masked = config.mask_text(text)
    assert "aaa" not in masked and "bbb" not in masked
    assert "redis://:***@h:1/0" in masked and "amqp://u:***@h:5672//" in masked


def test_mask_text_hides_a_password_with_spaces_when_told_the_url():
    url = "redis://:two words@h:1/0"
    assert "two words" not in config.mask_text(f"Cannot reach {url}: refused", url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "No broker URL given"),
        ("garbage", "'garbage' is not a broker URL: expected redis://HOST:6379/0"),
        ("redis:/127.0.0.1:6379/13", "did you mean redis://127.0.0.1:6379/13?"),
        ("http://x", "'http' is not a broker scheme"),
        ("http://localhost:6379", "'http' is not a broker scheme"),
        ("redis://:pa/ss@127.0.0.1:6379/0", "must be percent-encoded"),
        ("redis://:pa ss@127.0.0.1:6379/0", "contains whitespace"),
        ("amqp://guest:pa;ss@127.0.0.1:5672//", "(%3B)"),
        ("redis://127.0.0.1:port/0", "is not a number"),
        ("redis://127.0.0.1:6379/0?password=s3cret", "kombu reads no password from the query string"),
        ("sqs://key:secret@", "needs the package"),
    ],
)
def test_broker_urls_that_cannot_work_are_named_before_any_io(url, problem):
    from celerynb.config.validation import InvalidURL, check_broker_url

    with pytest.raises(InvalidURL, match=re.escape(problem)) as info:
        check_broker_url(url)
    assert "s3cret" not in str(info.value) and "pa/ss" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("url", ["redis://:p%40ss@127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//", "memory://",
                                 "redis+socket:///run/redis.sock", "sentinel://:pw@h1:26379;sentinel://:pw@h2:26379"])
def test_broker_urls_that_can_work_pass(url):
    from celerynb.config.validation import check_broker_url

    check_broker_url(url)


def test_backend_urls_are_checked_against_celerys_backends():
    from celerynb.config.validation import InvalidURL, check_backend_url

    for good in ("redis://127.0.0.1:6379/0", "rpc://", "cache+memory://", "redis://h/0?password=ok-for-redis-py"):
        check_backend_url(good)
    with pytest.raises(InvalidURL, match="'http' is not a result backend scheme"):
        check_backend_url("http://x")


def test_resolved_repr_masks_the_password():
    resolved = config.Resolved("redis://:topsecret@h:1/0", "redis://:topsecret@h:1/0", "env")
    assert "topsecret" not in repr(resolved) and "***" in repr(resolved)


@pytest.mark.parametrize(
    ("env", "broker", "backend"),
    [
        ({"CELERY_BROKER_URL": "redis://h:1/0"}, "redis://h:1/0", "redis://h:1/0"),
        ({"CELERY_BROKER_URL": "amqp://g:g@h//"}, "amqp://g:g@h//", ""),
        ({"REDIS_URL": "redis://h:2/0"}, "redis://h:2/0", "redis://h:2/0"),
        ({"CELERY_RESULT_BACKEND": "redis://h:3/1"}, "redis://h:3/1", "redis://h:3/1"),
        (
            {"CELERY_BROKER_URL": "amqp://g:g@h//", "CELERY_RESULT_BACKEND": "redis://h:3/1"},
            "amqp://g:g@h//",
            "redis://h:3/1",
        ),
        ({"CELERY_BROKER_URL": "redis://h:1/0", "REDIS_URL": "redis://other:2/0"}, "redis://h:1/0", "redis://other:2/0"),
    ],
)
def test_environment_variables(runtime, monkeypatch, env, broker, backend):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = config.resolve()
    assert (found.broker_url, found.result_backend, found.source) == (broker, backend, "env")


def test_nothing_configured_means_embedded(runtime):
    assert config.from_environment() is None
    assert config.resolve() is None


def test_discovery_file_is_private_atomic_and_found(runtime, monkeypatch, live_up):
    monkeypatch.setattr(os, "umask", os.umask)  # restored below whatever happens
    old = os.umask(0o000)  # the most permissive umask must not leak the password
    try:
        path = live_up(url="redis://:pw@127.0.0.1:1/0", server_pid=os.getpid())
    finally:
        os.umask(old)
    assert path == runtime / config.DISCOVERY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(runtime.stat().st_mode) & 0o077 == 0
    assert not list(runtime.glob("*.tmp"))
    found = config.resolve()
    assert (found.broker_url, found.source) == ("redis://:pw@127.0.0.1:1/0", "discovery")


def test_environment_wins_over_discovery(runtime, monkeypatch):
    config.write_discovery({"url": "redis://:pw@127.0.0.1:1/0", "server_pid": os.getpid(), "up_pid": 1})
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://elsewhere:6379/0")
    assert config.resolve().source == "env"


def test_stale_or_broken_discovery_file_is_ignored(runtime):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    config.write_discovery({"url": "redis://:pw@127.0.0.1:1/0", "server_pid": dead.pid, "up_pid": dead.pid})
    assert config.read_discovery() is None and config.resolve() is None
    config.discovery_path().write_text("{not json")
    assert config.read_discovery() is None
    config.discovery_path().write_text("[1, 2]")
    assert config.read_discovery() is None


def test_remove_discovery_only_removes_its_own(runtime):
    config.write_discovery({"url": "redis://h:1/0", "server_pid": os.getpid(), "up_pid": 111})
    config.remove_discovery(expected_pid=222)
    assert config.discovery_path().exists()
    config.remove_discovery(expected_pid=111)
    assert not config.discovery_path().exists()
    config.remove_discovery()  # nothing there: no error


@pytest.mark.reliability
def test_stale_discovery_file_is_removed_with_one_warning(runtime, caplog):
    from celerynb.config import discovery

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = discovery.process_identity(dead.pid)
    dead.wait()
    record = {"url": "redis://:pw@127.0.0.1:1/0", "up_pid": dead.pid, "server_pid": dead.pid,
              "identities": {str(dead.pid): identity}}
    config.write_discovery(record)
    assert discovery.discovery_state() == (discovery.STALE, record)
    with caplog.at_level("WARNING", logger="celerynb"):
        assert config.read_discovery() is None and config.read_discovery() is None
    assert not config.discovery_path().exists()
    assert [r.getMessage() for r in caplog.records].count(
        f"celerynb: removed a stale discovery file (its `celerynb up` (pid {dead.pid}) is gone): "
        f"{config.discovery_path()}") == 1
    assert "pw" not in caplog.text


@pytest.mark.reliability
def test_discovery_is_running_only_with_the_lock_and_the_recorded_identity(runtime):
    from celerynb.config import discovery

    mine = discovery.with_identities({"url": "redis://h:1/0", "up_pid": os.getpid()}, os.getpid())
    config.write_discovery(mine)
    assert discovery.discovery_state()[0] == discovery.STALE  # nobody holds the lock: `up` is gone
    lock = discovery.hold_cluster_lock()
    try:
        assert discovery.discovery_state()[0] == discovery.RUNNING
        assert not discovery.remove_stale_discovery()  # a live `up` keeps its file
        reused = dict(mine, identities={str(os.getpid()): "another-boot:1"})  # same PID, another process
        config.write_discovery(reused)
        assert discovery.discovery_state()[0] == discovery.STALE
        with pytest.raises(discovery.ClusterLockHeld, match="another `celerynb up` is running"):
            discovery.hold_cluster_lock(timeout=0.1)
    finally:
        os.close(lock)


@pytest.mark.reliability
def test_process_identity_tells_a_reused_pid_apart():
    import signal

    from celerynb.config import identity

    me = identity.process_identity(os.getpid())
    assert me and identity.is_same_process(os.getpid(), me)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        real = identity.process_identity(sleeper.pid)
        assert real and real != me
        assert not identity.signal_if_same(sleeper.pid, me, signal.SIGKILL)  # the PID names someone else
        assert not identity.signal_if_same(sleeper.pid, None, signal.SIGKILL)
        assert sleeper.poll() is None
        assert identity.signal_if_same(sleeper.pid, real, signal.SIGKILL)
        wait_for(lambda: identity.process_identity(sleeper.pid) is None, message="the sleeper to die")  # a zombie
        sleeper.wait()
        assert identity.process_identity(sleeper.pid) is None and not identity.is_same_process(sleeper.pid, real)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.reliability
def test_sweep_removes_only_directories_of_owners_that_are_gone(runtime):
    from celerynb.config import identity, scratch

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = scratch.scratch_root()
    ticks = identity.start_ticks()
    gone = root / f"logs-{dead.pid}-{ticks}-a"
    reused = root / f"logs-{os.getpid()}-{int(ticks) + 1}-b"  # our PID, another start time: not us
    live = scratch.make_scratch_dir("valkey")
    held = root / f"valkey-{dead.pid}-{ticks}-c"  # owner gone, but a surviving child holds its lock
    foreign = root / "something-else"
    for path in (gone, reused, held, foreign):
        path.mkdir()
        (path / "server.log").write_text("x")
    fd = scratch.lock_dir(held)
    try:
        removed = scratch.sweep()
        assert sorted(removed) == sorted([gone, reused])
        assert live.exists() and held.exists() and foreign.exists()
    finally:
        os.close(fd)
    assert held in scratch.sweep()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/celery", "-A", "app", "worker"], True),
        (["/usr/lib/python3/site-packages/celery/__main__.py", "-A", "app", "beat"], True),
        (["/venv/bin/celery", "-A", "app", "inspect", "ping"], True),
        (["/venv/bin/celery", "--app=app", "-q", "--skip-checks", "worker", "-l", "INFO"], True),
        (["/venv/bin/celery", "-b", "redis://h", "-Aapp", "-Cq", "beat"], True),
        (["/venv/bin/ipykernel_launcher.py", "-f", "kernel.json"], False),
        (["/venv/bin/celerynb", "up"], False),
        (["script.py", "worker"], False),
        (["/venv/lib/python3.11/site-packages/pytest/__main__.py", "-k", "worker"], False),
        (["/venv/bin/pytest", "tests/test_cluster.py", "-k", "worker and beat"], False),
        (["/venv/bin/celery", "-A", "worker", "shell"], False),  # an app module named "worker"
        (["/venv/bin/celery", "-A", "app", "call", "worker"], False),
    ],
)
def test_in_celery_command(monkeypatch, argv, expected):
    import celery.bin.celery  # noqa: F401 - loaded in every real celery command

    monkeypatch.setattr(sys, "argv", argv)
    assert config.in_celery_command() is expected


def test_pytest_selecting_worker_tests_may_start_the_embedded_server(tmp_path):
    """``python -m pytest -k worker`` is no ``celery worker``: the first task starts the embedded
    server as in any other process (it used to be refused with "no broker is configured")."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import celerynb\n"
        "from celerynb import config\n"
        "from celerynb.workers import tasks\n\n"
        "def test_worker_probe():\n"
        "    assert config.in_celery_command() is False\n"
        "    try:\n"
        "        assert tasks.analyze_content.delay('one two').get(timeout=60)['words'] == 2\n"
        "    finally:\n"
        "        celerynb.stop()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in BROKER_VARS}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "worker", str(probe)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


# -- resolution into a Celery app ---------------------------------------------------------------
def test_app_resolves_from_environment_and_checks_the_broker(runtime, monkeypatch, private_server):
    monkeypatch.setenv("CELERY_BROKER_URL", private_server.url)
    app = _fresh_app()
    assert app.conf.task_serializer == "json"  # the first configuration read resolves
    assert urls.source_of(app) == "env"
    assert app.conf.broker_url == app.conf.result_backend == private_server.url


def test_connect_to_explicit_url_starts_no_embedded_server(runtime, private_server):
    """A fresh process that connects elsewhere must not start a server it will never use."""
    code = (
        "import celerynb, sys\n"
        "from celerynb.cluster import server\n"
        "celerynb.connect(sys.argv[1], workers=False)\n"
        "print(server.shared_server(start=False))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, private_server.url], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_app_resolves_from_discovery(runtime, private_server, live_up):
    live_up(url=private_server.url, server_pid=private_server.pid)
    app = _fresh_app()
    urls.resolve_into(app)
    assert urls.source_of(app) == "discovery" and app.conf.broker_url == private_server.url


def test_forget_then_resolve_again_follows_a_changed_environment(runtime, monkeypatch, private_server, live_up):
    app = _fresh_app()
    monkeypatch.setenv("REDIS_URL", private_server.url)
    urls.resolve_into(app)
    assert urls.source_of(app) == "env"
    monkeypatch.delenv("REDIS_URL")
    live_up(url=private_server.url.replace("/0", "/1"), server_pid=private_server.pid)
    urls.resolve_into(app)  # already resolved: unchanged
    assert app.conf.broker_url == private_server.url
    urls.forget(app)
    urls.resolve_into(app)
    assert urls.source_of(app) == "discovery" and app.conf.broker_url.endswith("/1")


def test_unreachable_environment_url_raises_on_resolution(runtime, monkeypatch):
    url = f"redis://:pw-in-url@127.0.0.1:{server.free_port()}/0"
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    app = _fresh_app()
    with pytest.raises(connectivity.BrokerUnreachable, match=r"redis://:\*\*\*@127\.0\.0\.1:\d+/0"):
        urls.resolve_into(app)
    assert urls.source_of(app) is None  # a later attempt resolves again


def test_connectivity_check_accepts_empty_and_unknown_schemes():
    """No URL, or a scheme it has no check for: nothing is contacted and nothing is raised.
    A Redis URL at the same address is contacted (and a server that never answers fails)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed at the end of the test
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        unchecked = ("", "memory://", f"filesystem://127.0.0.1:{port}/", f"sqs://key:secret@127.0.0.1:{port}/")
        for url in unchecked:
            assert connectivity.check(url, timeout=0.5) is None, url
        with pytest.raises(connectivity.BrokerUnreachable, match=re.escape(f"Cannot reach redis://127.0.0.1:{port}/0")):
            connectivity.check(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        # Connections are accepted in the order they were made: once the Redis check's is in,
        # any made for the unchecked URLs before it would be in too.
        wait_for(lambda: accepted, message="the redis check's connection")
        assert len(accepted) == 1, f"{len(accepted) - 1} connection(s) made for {unchecked}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
        for conn in accepted:
            conn.close()
