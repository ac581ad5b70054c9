"""Pub/sub for asyncio code: one reader task per object, each handler call its own task.

The guide's handler waits on a Celery task with ``sleep(1)`` loops; running every call as its
own asyncio task keeps such a handler from blocking other channels. A handler that raises is
logged and the subscription continues; after a lost connection the reader reconnects with
backoff and resubscribes everything.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from celerynb import config
from celerynb.messaging.client import CONNECTION_ERRORS, GLOB_CHARS, AsyncRedisClient, Handler, NotConnected, as_text

logger = logging.getLogger("celerynb.messaging")


class RedisPubSub:
    """Subscribe async handlers to Redis channels; one reader task dispatches every message.

    Each message runs ``await handler(channel, message)`` (both ``str``) as its own asyncio
    task, so a slow handler never holds up other channels or messages. A handler that raises
    is logged and the subscription goes on. After a lost connection the reader reconnects
    with backoff and resubscribes everything (messages published while the server was away
    are lost: that is pub/sub).

    Patterns: a channel containing ``*``, ``?`` or ``[`` is a pattern (``PSUBSCRIBE``) unless
    ``pattern=False`` is passed; ``pattern=True`` forces one. Pattern handlers receive the
    real channel name.

    Args:
        client: the :class:`AsyncRedisClient` to use (connected on first use); a new default
            one when None, closed by :meth:`close`.
        confirm_timeout: seconds :meth:`subscribe` waits for the server's confirmation.
    """

    def __init__(self, client: AsyncRedisClient | None = None, *, confirm_timeout: float = 10.0,
                 reconnect_max_delay: float = 1.0) -> None:
        if client is not None and not isinstance(client, AsyncRedisClient):
            raise TypeError(f"client must be an AsyncRedisClient, not {type(client).__name__}.")
        self.client = client or AsyncRedisClient()
        self._own_client = client is None
        self.confirm_timeout = confirm_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._confirmed: set[tuple[str, str]] = set()
        self._waiters: dict[tuple[str, str], list[asyncio.Future]] = {}
        self._ps: Any = None
        self._reader: asyncio.Task | None = None
        self._handler_tasks: set[asyncio.Task] = set()
        self.reconnects = 0

    def __repr__(self) -> str:
        return (f"<RedisPubSub channels={len(self.channels)} patterns={len(self.patterns)} "
                f"reader={'running' if self._reader and not self._reader.done() else 'stopped'} on {self.client!r}>")

    @property
    def channels(self) -> list[str]:
        return sorted(n for k, n in self._handlers if k == "channel")

    @property
    def patterns(self) -> list[str]:
        return sorted(n for k, n in self._handlers if k == "pattern")

    async def subscribe(self, channel: str, handler: Handler, *, pattern: bool | None = None) -> None:
        """Call ``handler(channel, message)`` for each message; returns once the server confirmed.

        Subscribing again to the same channel replaces its handler.
        """
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty string, not {channel!r}.")
        if not callable(handler):
            raise TypeError(f"handler must be a function `async def handler(channel, message)`, not {handler!r}.")
        if pattern is None:
            pattern = bool(GLOB_CHARS & set(channel))
        key = ("pattern" if pattern else "channel", channel)
        await self.client.connect()
        self._handlers[key] = handler
        if key in self._confirmed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="RedisPubSub reader")
        elif self._ps is not None:
            await self._send(key, subscribe=True)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.confirm_timeout)
        except TimeoutError:
            self._handlers.pop(key, None)
            raise RedisConnectionError(
                f"No confirmation of the subscription to {channel!r} from {config.mask_url(self.client.url)} "
                f"within {self.confirm_timeout} s: is the server reachable?"
            ) from None
        finally:
            if waiter in self._waiters.get(key, []):
                self._waiters[key].remove(waiter)

    async def psubscribe(self, pattern: str, handler: Handler) -> None:
        """Subscribe ``handler`` to a glob pattern (``PSUBSCRIBE``)."""
        await self.subscribe(pattern, handler, pattern=True)

    async def publish(self, channel: str, message: Any) -> int:
        """Publish text (dicts and lists as JSON); returns how many subscribers received it."""
        await self.client.connect()
        return await self.client.publish(channel, message)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` (or the pattern of that name); unknown names are ignored."""
        for key in (("channel", channel), ("pattern", channel)):
            if self._handlers.pop(key, None) is not None:
                self._confirmed.discard(key)
                if self._ps is not None:
                    await self._send(key, subscribe=False)

    async def unsubscribe_all(self, *, cancel_handlers: bool = True) -> None:
        """Unsubscribe everything, stop the reader and release its connection.

        Handler calls still running are cancelled and waited for (unless ``cancel_handlers``
        is False). Subscribing again afterwards starts a new reader.
        """
        self._handlers.clear()
        self._confirmed.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await self._discard_ps()
        if cancel_handlers:
            current = asyncio.current_task()
            tasks = [t for t in self._handler_tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until the handler calls running now have finished; False if some still run after ``timeout``."""
        current = asyncio.current_task()
        tasks = [t for t in self._handler_tasks if t is not current]
        if not tasks:
            return True
        _, left = await asyncio.wait(tasks, timeout=timeout)
        return not left

    async def close(self) -> None:
        """:meth:`unsubscribe_all`, and disconnect the client if this object created it."""
        await self.unsubscribe_all()
        if self._own_client:
            await self.client.disconnect()

    async def __aenter__(self) -> RedisPubSub:
        await self.client.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the reader ---------------------------------------------------------------------------

    async def _send(self, key: tuple[str, str], *, subscribe: bool) -> None:
        kind, name = key
        ps = self._ps
        method = {("channel", True): "subscribe", ("pattern", True): "psubscribe",
                  ("channel", False): "unsubscribe", ("pattern", False): "punsubscribe"}[kind, subscribe]
        try:
            await getattr(ps, method)(name)
        except CONNECTION_ERRORS as exc:  # the reader reconnects and resubscribes from _handlers
            logger.debug("%s %r deferred to the reconnection: %s", method, name, exc)

    async def _open(self) -> None:
        ps = self.client.redis.pubsub()
        try:
            channels = [n for k, n in self._handlers if k == "channel"]
            patterns = [n for k, n in self._handlers if k == "pattern"]
            if channels:
                await ps.subscribe(*channels)
            if patterns:
                await ps.psubscribe(*patterns)
            if not channels and not patterns:
                await ps.connect()
        except BaseException:
            await _close_quietly(ps)
            raise
        self._ps = ps
        sent = {("channel", n) for n in channels} | {("pattern", n) for n in patterns}
        for key in [k for k in self._handlers if k not in sent]:  # subscribed while we were opening
            await self._send(key, subscribe=True)

    async def _discard_ps(self) -> None:
        ps, self._ps = self._ps, None
        if ps is not None:
            await _close_quietly(ps)

    async def _read_loop(self) -> None:
        delay, lost = 0.05, False
        while True:
            try:
                if not self.client.connected:
                    raise NotConnected("the client was disconnected")
                if self._ps is None:
                    self._confirmed.clear()
                    await self._open()
                    if lost:
                        self.reconnects += 1
                        logger.warning("pub/sub reconnected to %s and resubscribed", config.mask_url(self.client.url))
                    delay, lost = 0.05, False
                # A bounded wait keeps redis-py's health check running on quiet connections.
                message = await self._ps.get_message(timeout=1.0)
                if message:
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except NotConnected:
                logger.warning("pub/sub stopped: its AsyncRedisClient was disconnected (call unsubscribe_all() first)")
                await self._discard_ps()
                return
            except CONNECTION_ERRORS as exc:
                if not lost:
                    logger.warning("pub/sub connection to %s lost (%s); reconnecting",
                                   config.mask_url(self.client.url), config.mask_text(str(exc)))
                lost = True
                await self._discard_ps()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
            except Exception:  # noqa: BLE001 - the reader must outlive any surprise
                logger.exception("unexpected error in the pub/sub reader; it carries on")
                await self._discard_ps()
                await asyncio.sleep(delay)

    def _dispatch(self, message: dict) -> None:
        kind = as_text(message.get("type"))
        if kind in ("subscribe", "psubscribe"):
            key = ("channel" if kind == "subscribe" else "pattern", as_text(message["channel"]))
            if key in self._handlers:
                self._confirmed.add(key)
            for waiter in self._waiters.pop(key, []):
                if not waiter.done():
                    waiter.set_result(None)
            return
        if kind == "message":
            key = ("channel", as_text(message["channel"]))
        elif kind == "pmessage":
            key = ("pattern", as_text(message["pattern"]))
        else:
            return
        handler = self._handlers.get(key)
        if handler is None:  # unsubscribed while the message was in flight
            return
        channel, data = as_text(message["channel"]), as_text(message["data"])
        task = asyncio.get_running_loop().create_task(self._call(handler, channel, data))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _call(self, handler: Handler, channel: str, data: str) -> None:
        try:
            outcome = handler(channel, data)
            if inspect.isawaitable(outcome):
                await outcome
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad message must not end the subscription
            logger.exception("pub/sub handler %s for channel %r raised; the subscription continues",
                             getattr(handler, "__qualname__", handler), channel)


async def _close_quietly(ps: Any) -> None:
    try:
        await ps.aclose()
    except Exception:  # noqa: BLE001 - the connection may be broken already
        pass
