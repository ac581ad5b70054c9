"""An asyncio Redis client next to Celery, connected where the Celery app is.

It connects where the Celery app does (the same resolution: environment, ``celerynb up``,
then the embedded server), so the guide's ``AsyncRedisClient()`` with no arguments talks to the
broker the tasks use. Reconnecting is automatic: commands retry with backoff (redis-py's retry
settings), and :class:`RedisPubSub` resubscribes everything after the server comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from celerynb import config
from celerynb.config import reachability

logger = logging.getLogger("celerynb.messaging")

Handler = Callable[[str, str], Awaitable[None] | None]

GLOB_CHARS = frozenset("*?[")
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class NotConnected(RuntimeError):
    """A command was sent before :meth:`AsyncRedisClient.connect`."""


def default_url() -> str:
    """The Redis URL the Celery app uses (or will use): the broker, else the result backend.

    An app already configured keeps its URL; otherwise the same resolution as the app's:
    ``CELERY_BROKER_URL``/``REDIS_URL``, a running ``celerynb up``, then the embedded server
    (started here if needed, the same one the app will use).
    """
    from celerynb.cluster import server
    from celerynb.workers import urls
    from celerynb.workers.celery_app import app

    if urls.source_of(app) is not None:
        candidates = [app.conf.broker_url, app.conf.result_backend]
    else:
        found = config.resolve()
        if found is None:
            return server.shared_server().url
        candidates = [found.broker_url, found.result_backend]
    for url in candidates:
        if isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            return url
    shown = ", ".join(config.mask_url(u) for u in candidates if u) or "none"
    raise ValueError(
        f"The Celery app uses no Redis server ({shown}): pass one, e.g. AsyncRedisClient('redis://HOST:6379/0')."
    )


def as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _payload(message: Any) -> str | bytes | int | float:
    """What to publish: text as is, dicts and lists as JSON."""
    if isinstance(message, str | bytes | int | float):
        return message
    if isinstance(message, dict | list | tuple):
        return json.dumps(message)
    raise TypeError(f"Cannot publish a {type(message).__name__}: pass text, bytes, a number, or a dict/list (sent as JSON).")


class AsyncRedisClient:
    """An asyncio Redis client (``redis.asyncio``) with celerynb's connection settings.

    Args:
        url: ``redis://[:password@]host:port/db``; default: where the Celery app connects
            (see :func:`default_url`).
        connect_timeout: seconds for the first connection check; an unreachable server is
            an error within about this time.
        retries: attempts per command after a lost connection (exponential backoff, capped
            at 1 s), which rides over a server restart of a few seconds.
        options: passed to ``redis.asyncio.Redis.from_url`` (``decode_responses`` defaults to
            True so that values come back as ``str``).

    Every ``redis.asyncio.Redis`` command is available (``await client.zadd(...)``); the
    common ones are spelled out below.
    """

    def __init__(self, url: str | None = None, *, connect_timeout: float = 3.0, retries: int = 6, **options: Any) -> None:
        if url is not None and not isinstance(url, str):
            raise TypeError(f"url must be a redis:// URL string, not {type(url).__name__}.")
        self._url = url
        self.connect_timeout = connect_timeout
        options.setdefault("decode_responses", True)
        options.setdefault("socket_connect_timeout", connect_timeout)
        options.setdefault("health_check_interval", 15)
        options.setdefault("retry", Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries))
        options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
        self._options = options
        self._redis: aioredis.Redis | None = None

    @property
    def url(self) -> str | None:
        """The URL in use (None until resolved by :meth:`connect`). It holds the password: never print it."""
        return self._url

    @property
    def connected(self) -> bool:
        return self._redis is not None

    @property
    def redis(self) -> aioredis.Redis:
        """The underlying ``redis.asyncio.Redis``."""
        if self._redis is None:
            raise NotConnected("AsyncRedisClient is not connected: call `await client.connect()` first.")
        return self._redis

    def __repr__(self) -> str:
        where = config.mask_url(self._url) if self._url else "default URL"
        return f"<AsyncRedisClient {where} {'connected' if self.connected else 'not connected'}>"

    async def connect(self) -> AsyncRedisClient:
        """Resolve the URL, check the server answers (fast failure), and open the pool. Idempotent.

        Raises:
            celerynb.config.reachability.BrokerUnreachable: the server did not answer.
        """
        if self._redis is not None:
            return self
        if self._url is None:
            self._url = await asyncio.to_thread(default_url)
        await asyncio.to_thread(reachability.check, self._url, self.connect_timeout)
        client = aioredis.Redis.from_url(self._url, **self._options)
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise reachability.BrokerUnreachable(
                f"Cannot reach {config.mask_url(self._url)}: {config.mask_text(str(exc)).rstrip('.')}."
            ) from None
        if self._redis is not None:  # a concurrent connect() won the race: keep one pool
            await client.aclose()
        else:
            self._redis = client
        return self

    async def disconnect(self) -> None:
        """Close every connection of the pool. Idempotent; :meth:`connect` opens it again."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> AsyncRedisClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.redis, name)

    # The common commands, for discoverability; everything else goes through __getattr__.
    async def ping(self) -> bool:
        return await self.redis.ping()

    async def get(self, key: str) -> Any:
        return await self.redis.get(key)

    async def set(self, key: str, value: Any, ex: int | timedelta | None = None, nx: bool = False, **kw: Any) -> Any:
        return await self.redis.set(key, value, ex=ex, nx=nx, **kw)

    async def delete(self, *keys: str) -> int:
        return await self.redis.delete(*keys)

    async def exists(self, *keys: str) -> int:
        return await self.redis.exists(*keys)

    async def expire(self, key: str, seconds: int) -> bool:
        return await self.redis.expire(key, seconds)

    async def incr(self, key: str, amount: int = 1) -> int:
        return await self.redis.incr(key, amount)

    async def hget(self, name: str, key: str) -> Any:
        return await self.redis.hget(name, key)

    async def hset(self, name: str, key: str | None = None, value: Any = None, mapping: dict | None = None) -> int:
        return await self.redis.hset(name, key, value, mapping=mapping)

    async def hgetall(self, name: str) -> dict:
        return await self.redis.hgetall(name)

    async def lpush(self, name: str, *values: Any) -> int:
        return await self.redis.lpush(name, *values)

    async def rpop(self, name: str, count: int | None = None) -> Any:
        return await self.redis.rpop(name, count)

    async def publish(self, channel: str, message: Any) -> int:
        """Publish text (dicts and lists as JSON); returns how many subscribers received it."""
        return await self.redis.publish(channel, _payload(message))


__all__ = ["AsyncRedisClient", "NotConnected", "default_url"]
