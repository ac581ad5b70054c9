"""Where the monitor reads task states: its own Redis connection (push) or the app's backend (poll).

Kept apart from the monitor's bookkeeping so that each file has one job; the monitor thread
owns one instance at a time and replaces it after a lost connection.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, states

from celerynb.workers.batch_results import gathered_channel

#: Ids per SUBSCRIBE / MGET command.
BATCH = 1000
#: What :meth:`BackendSource.get_message` names a gathered message with (a JSON array of
#: documents stored by a batch: :mod:`celerynb.workers.batch_results`) instead of a task id.
GATHERED = "*gathered*"


class BackendSource:
    """Where states come from: a private Redis connection (push) or the app's backend (poll)."""

    mode = "poll"

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.url = app.conf.result_backend
        self.backend = app.backend  # a thread-local instance, owned by the monitor thread
        self.redis: Any = None
        self.pubsub: Any = None
        self.confirmed = 0  # subscriptions the server confirmed

    @classmethod
    def open(cls, app: Celery) -> BackendSource:
        source = cls(app)
        from celery.backends.redis import RedisBackend

        if isinstance(source.backend, RedisBackend):
            source._connect_redis()
        return source

    def _connect_redis(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        params = dict(self.backend.connparams)
        params["max_connections"] = 2
        params["socket_connect_timeout"] = params.get("socket_connect_timeout") or 2.0
        params["retry"] = Retry(NoBackoff(), 0)
        params.pop("retry_on_timeout", None)
        params["client_name"] = "celerynb-monitor"
        # The monitor's connections are its own: the app's pools are never shared across threads.
        self.redis = redis.Redis(connection_pool=redis.ConnectionPool(**params))
        self.redis.ping()
        self.pubsub = self.redis.pubsub()  # confirmations are read and skipped by the caller
        self.prefix = self.backend.get_key_for_task("x")[:-1]
        self.gathered = gathered_channel(self.backend)
        self.mode = "redis"

    def key(self, task_id: str) -> bytes:
        return self.backend.get_key_for_task(task_id)

    def server_run(self) -> tuple[str, bool] | None:
        """(run id, keeps data across restarts) of a Redis server; None when unknown."""
        if self.redis is None:
            return None
        try:
            info = self.redis.info("server")
            persistence = self.redis.info("persistence")
        except Exception:  # noqa: BLE001 - INFO may be disabled on managed servers
            return None
        keeps = bool(int(persistence.get("aof_enabled", 0) or 0))
        return str(info.get("run_id")), keeps

    def holds_broker(self) -> bool:
        """Whether the broker lives on this same server (then its queues went with it)."""
        from urllib.parse import urlsplit

        def where(url: str) -> tuple[Any, ...]:
            parts = urlsplit(url or "")
            return parts.scheme.replace("rediss", "redis"), parts.hostname, parts.port or 6379

        return where(self.app.conf.broker_url) == where(self.url)

    def subscribe(self, task_ids: list[str]) -> None:
        for start in range(0, len(task_ids), BATCH):
            self.pubsub.subscribe(*[self.key(t) for t in task_ids[start:start + BATCH]])

    def unsubscribe(self, task_ids: list[str]) -> None:
        for start in range(0, len(task_ids), BATCH):
            self.pubsub.unsubscribe(*[self.key(t) for t in task_ids[start:start + BATCH]])

    def subscribe_all(self) -> None:
        """One pattern subscription for every task's channel (a server private to this session),
        and the batches' gathered channel: their items are then PUBLISHed there, together."""
        pattern = b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in self.prefix)
        self.pubsub.psubscribe(pattern + b"*")
        self.pubsub.subscribe(self.gathered)

    def get_message(self, timeout: float) -> tuple[str, bytes | None] | None:
        """``(task id, payload)`` of a pushed state, ``(GATHERED, payload)`` of a batch's gathered
        states; ``("", None)`` for anything else read (a subscription confirmation); None when
        nothing came within ``timeout``."""
        if not self.pubsub.subscribed:
            time.sleep(timeout)
            return None
        message = self.pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        kind = message.get("type")
        if kind not in ("message", "pmessage"):
            if kind in ("subscribe", "psubscribe"):
                self.confirmed += 1
            return "", None
        channel = message["channel"]
        if isinstance(channel, str):
            channel = channel.encode()
        if channel == self.gathered:
            return GATHERED, message["data"]
        return channel[len(self.prefix):].decode(), message["data"]

    def read(self, task_ids: list[str]) -> list[Any]:
        """Raw payloads (None where the key does not exist) in one command where possible."""
        keys = [self.key(t) for t in task_ids]
        if self.redis is not None:
            return self.redis.mget(keys)
        backend = self.backend
        if hasattr(backend, "mget") and hasattr(backend, "get_key_for_task"):
            values = backend.mget(keys)
            if isinstance(values, dict):
                values = [values.get(k, values.get(k.decode() if isinstance(k, bytes) else k)) for k in keys]
            return list(values)
        # Database-like backends: one query per id, still from this single thread.
        found = []
        for tid in task_ids:
            meta = backend.get_task_meta(tid)
            found.append(None if meta.get("status") == states.PENDING else meta)
        return found

    def decode(self, payload: Any) -> dict[str, Any] | None:
        if payload is None or isinstance(payload, dict):
            return payload
        return self.backend.decode(payload)

    def close(self) -> None:
        for closer in (getattr(self.pubsub, "close", None), getattr(self.redis, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:  # noqa: BLE001 - the server may be gone
                    pass
        if self.redis is not None:
            try:
                self.redis.connection_pool.disconnect()
            except Exception:  # noqa: BLE001
                pass


class BackendNotObservable(ValueError):
    """The app's result backend keeps task states where this process cannot read them."""


def check_observable(app: Celery) -> None:
    """Say in one sentence why states cannot be followed, instead of a bar stuck at PENDING."""
    from celery.backends.base import DisabledBackend
    from celery.backends.rpc import RPCBackend

    backend = app.backend
    if isinstance(backend, DisabledBackend):
        raise BackendNotObservable(
            f"The app {app.main!r} has no result backend (result_backend is not set), so task states "
            "cannot be observed: set result_backend (e.g. redis://...) or use `%celery use APP --local`."
        )
    if isinstance(backend, RPCBackend):
        raise BackendNotObservable(
            f"The app {app.main!r} uses the rpc:// result backend, which sends each state only to the "
            "client that sent the task, as a one-time message: use a Redis or database result backend "
            "to follow tasks here (result.get() still works for tasks sent from this kernel)."
        )
