"""Fail fast on a broker that cannot be reached.

redis-py's default retries plus Celery's own make a refused connection take ~20 s to surface;
a single attempt with no retries answers in a fraction of a second, with a message that names
the URL (password masked) and what to do. Whether the URL makes sense at all (scheme, shape) is
:mod:`celerynb.config.validation`'s question, asked first.
"""

from __future__ import annotations

from celerynb.config import mask_text, mask_url


class BrokerUnreachable(ConnectionError):
    """The broker or result backend at a URL did not answer."""


_REDIS_SOCKET = ("redis+socket://", "socket://")


def _hint(url: str) -> str:
    if url.startswith(("redis://", "rediss://", "unix://") + _REDIS_SOCKET):
        return "Check that Redis runs there and the password is right, or unset it to use the embedded server."
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return "Check that RabbitMQ runs there and the credentials are right."
    return "Check the URL."


def check(url: str, timeout: float = 2.0) -> None:
    """Raise :class:`BrokerUnreachable` unless ``url`` answers one request within ``timeout``."""
    if not url:
        return
    try:
        if url.startswith(("redis://", "rediss://", "unix://")):
            _check_redis(url, timeout)
        elif url.startswith(_REDIS_SOCKET):  # kombu's and Celery's spelling of a unix socket
            _check_redis("unix://" + url.partition("://")[2], timeout)
        elif url.startswith(("amqp://", "amqps://", "pyamqp://")):
            _check_amqp(url, timeout)
    except BrokerUnreachable:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        reason = " ".join(mask_text(str(exc), url).split()).rstrip(".") or type(exc).__name__
        raise BrokerUnreachable(f"Cannot reach {mask_url(url)}: {reason}. {_hint(url)}") from None


def _check_redis(url: str, timeout: float) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    finally:
        client.close()


def _check_amqp(url: str, timeout: float) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
