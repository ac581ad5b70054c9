"""AsyncRedisClient and RedisPubSub against real servers: a private Valkey, and Redis 7 where reachable."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
import redis as redis_sync
from conftest import own_keys_only, reachable

from celerynb.cluster.server import EmbeddedServer, free_port
from celerynb.config import reachability as connectivity
from celerynb.messaging.redis import AsyncRedisClient, NotConnected, RedisPubSub, default_url

REDIS7_URL = "redis://127.0.0.1:6379/13"


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate, timeout: float = 10.0, message: str = "condition"):
    """Async poll with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def valkey():
    server = EmbeddedServer().start()
    yield server
    server.stop()


@pytest.fixture
def restartable():
    """A private server this test may stop and start again on the same port."""
    server = EmbeddedServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["valkey", "redis7"])
def url(request, valkey):
    if request.param == "valkey":
        yield valkey.url
        # This module's own server (started above on a free port with a random password): every
        # key on it is this module's, so it is emptied whole. A shared server never is (below).
        with redis_sync.Redis.from_url(valkey.url) as client:
            client.flushdb()
        return
    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis 7 on 127.0.0.1:6379 is not reachable")
    with own_keys_only(REDIS7_URL):
        yield REDIS7_URL


def unique(prefix: str) -> str:
    return f"celerynb-test:{prefix}:{uuid.uuid4().hex[:8]}"


# -- AsyncRedisClient --------------------------------------------------------------------------


def test_client_commands_round_trip(url):
    async def main():
        client = AsyncRedisClient(url)
        with pytest.raises(NotConnected, match=r"await client.connect\(\)"):
            await client.get("k")
        async with client:
            assert await client.ping() is True
            assert await client.set("k", "v", ex=60) is True
            assert await client.get("k") == "v"  # str, not bytes
            assert await client.exists("k") == 1
            assert await client.expire("k", 100) is True
            assert await client.incr("n") == 1 and await client.incr("n", 5) == 6
            assert await client.hset("h", mapping={"a": "1", "b": "2"}) == 2
            assert await client.hget("h", "a") == "1"
            assert await client.hgetall("h") == {"a": "1", "b": "2"}
            assert await client.lpush("l", "x", "y") == 2
            assert await client.rpop("l") == "x"
            assert await client.zadd("z", {"m": 1.5}) == 1  # delegated to redis.asyncio
            assert await client.zscore("z", "m") == 1.5
            assert await client.delete("k", "n", "h", "l", "z") == 5
        assert not client.connected

    run(main())


def test_password_never_in_repr(valkey):
    async def main():
        client = AsyncRedisClient(valkey.url)
        await client.connect()
        try:
            assert valkey.password not in repr(client)
            assert "***" in repr(client)
            pubsub = RedisPubSub(client=client)
            assert valkey.password not in repr(pubsub)
        finally:
            await client.disconnect()

    run(main())


def test_unreachable_url_fails_fast_with_a_clear_message():
    port = free_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"

    async def main():
        client = AsyncRedisClient(url)
        started = time.monotonic()
        with pytest.raises(connectivity.BrokerUnreachable) as info:
            await client.connect()
        return time.monotonic() - started, str(info.value)

    elapsed, message = run(main())
    assert f"127.0.0.1:{port}" in message and "s3cret-pw" not in message
    assert elapsed < 10  # a guard against redis-py's ~20 s of retries, not a benchmark


def test_wrong_password_is_a_clear_error(valkey):
    bad = valkey.url.replace(valkey.password, "wrong-password")

    async def main():
        with pytest.raises(connectivity.BrokerUnreachable, match="Cannot reach") as info:
            await AsyncRedisClient(bad).connect()
        assert "wrong-password" not in str(info.value)

    run(main())


def test_bad_url_type():
    with pytest.raises(TypeError, match="redis:// URL"):
        AsyncRedisClient(6379)


def test_default_url_follows_the_environment(app, monkeypatch):
    from celerynb.workers import urls

    urls.forget(app)
    monkeypatch.setenv("REDIS_URL", "redis://:pw@127.0.0.1:1/3")
    assert default_url() == "redis://:pw@127.0.0.1:1/3"
    monkeypatch.setenv("REDIS_URL", "amqp://guest:guest@127.0.0.1:5672//")
    with pytest.raises(ValueError, match="uses no Redis server"):
        default_url()


def test_default_client_uses_the_apps_server(cluster, app):
    async def main():
        client = AsyncRedisClient()
        await client.connect()
        try:
            assert client.url == app.conf.broker_url
            await client.set("celerynb-test:shared", "seen")
        finally:
            await client.disconnect()

    run(main())
    backend_client = app.backend.client
    assert backend_client.get("celerynb-test:shared") == b"seen"
    backend_client.delete("celerynb-test:shared")


def test_client_reconnects_after_a_server_restart(restartable):
    async def main():
        async with AsyncRedisClient(restartable.url) as client:
            await client.set("k", "1")
            restartable.stop()
            restartable.start()
            assert await client.get("k") is None  # a new, empty server, reached without an error
            assert await client.set("k", "2") is True

    run(main())


# -- RedisPubSub -------------------------------------------------------------------------------


def test_pubsub_round_trip_and_patterns(url):
    async def main():
        got: asyncio.Queue = asyncio.Queue()

        async def handler(channel, message):
            got.put_nowait((channel, message))

        base = unique("rt")
        async with AsyncRedisClient(url) as client:
            pubsub = RedisPubSub(client=client)
            await pubsub.subscribe(f"{base}:exact", handler)
            await pubsub.subscribe(f"{base}:glob:*", handler)  # glob characters: PSUBSCRIBE
            await pubsub.subscribe(f"{base}:literal*", handler, pattern=False)
            assert pubsub.channels == sorted([f"{base}:exact", f"{base}:literal*"])
            assert pubsub.patterns == [f"{base}:glob:*"]
            assert await pubsub.publish(f"{base}:exact", "hello") == 1
            assert await pubsub.publish(f"{base}:glob:42", {"n": 42}) == 1
            assert await pubsub.publish(f"{base}:literalX", "not for the literal channel") == 0
            assert await pubsub.publish(f"{base}:literal*", "literal") == 1
            received = [await asyncio.wait_for(got.get(), 10) for _ in range(3)]
            assert sorted(received) == sorted([
                (f"{base}:exact", "hello"),
                (f"{base}:glob:42", '{"n": 42}'),  # the real channel, not the pattern
                (f"{base}:literal*", "literal"),
            ])
            await pubsub.unsubscribe(f"{base}:exact")
            await pubsub.unsubscribe(f"{base}:glob:*")
            await pubsub.unsubscribe("never-subscribed")  # ignored
            assert await pubsub.publish(f"{base}:exact", "gone") == 0
            assert await pubsub.publish(f"{base}:glob:1", "gone") == 0
            await pubsub.unsubscribe_all()
            assert pubsub.channels == [] and pubsub.patterns == []
            assert await pubsub.publish(f"{base}:literal*", "gone") == 0
            assert got.empty()

    run(main())


def test_handler_exception_is_logged_and_the_subscription_continues(valkey, caplog):
    async def main():
        got = []

        async def handler(channel, message):
            if message == "bad":
                raise ValueError("cannot handle bad")
            got.append(message)

        channel = unique("errors")
        async with AsyncRedisClient(valkey.url) as client:
            pubsub = RedisPubSub(client=client)
            await pubsub.subscribe(channel, handler)
            for message in ("one", "bad", "two"):
                await pubsub.publish(channel, message)
            await until(lambda: len(got) == 2, message="both good messages")
            await pubsub.unsubscribe_all()
        return got

    with caplog.at_level(logging.ERROR, logger="celerynb.messaging"):
        got = run(main())
    assert sorted(got) == ["one", "two"]
    assert "cannot handle bad" in caplog.text and "the subscription continues" in caplog.text


def test_slow_handler_does_not_block_other_channels(valkey):
    async def main():
        fast_got = []
        slow_started = asyncio.Event()
        release = asyncio.Event()

        async def slow(channel, message):
            slow_started.set()
            while not release.is_set():  # the guide's handler: sleep loops until a task is ready
                await asyncio.sleep(0.05)

        async def fast(channel, message):
            fast_got.append(message)

        slow_channel, fast_channel = unique("slow"), unique("fast")
        async with AsyncRedisClient(valkey.url) as client:
            pubsub = RedisPubSub(client=client)
            await pubsub.subscribe(slow_channel, slow)
            await pubsub.subscribe(fast_channel, fast)
            await pubsub.publish(slow_channel, "take your time")
            await asyncio.wait_for(slow_started.wait(), 10)
            for i in range(5):
                await pubsub.publish(fast_channel, str(i))
            await until(lambda: len(fast_got) == 5, message="fast messages while the slow handler runs")
            assert not release.is_set()
            release.set()
            await pubsub.drain(10)
            await pubsub.unsubscribe_all()
        assert fast_got == ["0", "1", "2", "3", "4"]

    run(main())


def test_unsubscribe_all_cancels_running_handlers(valkey):
    async def main():
        started = asyncio.Event()
        cancelled = []

        async def stuck(channel, message):
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(message)
                raise

        channel = unique("stuck")
        async with RedisPubSub(client=AsyncRedisClient(valkey.url)) as pubsub:
            await pubsub.subscribe(channel, stuck)
            await pubsub.publish(channel, "m")
            await asyncio.wait_for(started.wait(), 10)
            await pubsub.unsubscribe_all()
            assert cancelled == ["m"]
            assert "reader=stopped" in repr(pubsub)

    run(main())


def _numsub(url: str, channel: str) -> int:
    client = redis_sync.Redis.from_url(url)
    try:
        return client.pubsub_numsub(channel)[0][1]
    except redis_sync.ConnectionError:
        return 0
    finally:
        client.close()


@pytest.mark.parametrize("retries", [6, 0], ids=["redis-py-retry", "reader-reconnect"])
def test_pubsub_survives_a_server_restart(restartable, retries):
    """Restart the server on the same port between two publishes: the second one arrives.

    With ``retries=0`` redis-py gives up at once and the reader's own reconnect loop resubscribes.
    """

    async def main():
        got: asyncio.Queue = asyncio.Queue()

        async def handler(channel, message):
            got.put_nowait(message)

        channel, pattern = unique("restart"), unique("restart-pattern") + ":*"
        async with AsyncRedisClient(restartable.url, retries=retries) as client:
            pubsub = RedisPubSub(client=client)
            await pubsub.subscribe(channel, handler)
            await pubsub.subscribe(pattern, handler)
            await pubsub.publish(channel, "before")
            assert await asyncio.wait_for(got.get(), 10) == "before"

            restartable.stop()
            restartable.start()
            await until(lambda: _numsub(restartable.url, channel) == 1, timeout=20, message="resubscription")
            await until(lambda: pubsub.patterns and pubsub.reconnects >= (1 if retries == 0 else 0))
            publisher = redis_sync.Redis.from_url(restartable.url)
            try:
                assert publisher.publish(channel, "after") == 1
                assert publisher.publish(pattern[:-1] + "x", "after-pattern") == 1
            finally:
                publisher.close()
            assert {await asyncio.wait_for(got.get(), 10) for _ in range(2)} == {"after", "after-pattern"}
            await pubsub.unsubscribe_all()

    run(main())


def test_subscribe_validates_its_arguments(valkey):
    async def main():
        async with RedisPubSub(client=AsyncRedisClient(valkey.url)) as pubsub:
            with pytest.raises(ValueError, match="non-empty string"):
                await pubsub.subscribe("", lambda c, m: None)
            with pytest.raises(TypeError, match="async def handler"):
                await pubsub.subscribe("c", "not callable")
            with pytest.raises(TypeError, match="Cannot publish a set"):
                await pubsub.publish("c", {1, 2})

    run(main())
    with pytest.raises(TypeError, match="AsyncRedisClient"):
        RedisPubSub(client="redis://localhost")


def test_sync_handler_and_resubscribe_replaces_the_handler(valkey):
    async def main():
        first, second = [], []
        channel = unique("replace")
        async with RedisPubSub(client=AsyncRedisClient(valkey.url)) as pubsub:
            await pubsub.subscribe(channel, lambda c, m: first.append(m))  # plain functions work too
            await pubsub.publish(channel, "1")
            await until(lambda: first == ["1"])
            await pubsub.subscribe(channel, lambda c, m: second.append(m))
            await pubsub.publish(channel, "2")
            await until(lambda: second == ["2"])
        assert first == ["1"]

    run(main())


def test_pubsub_with_its_own_default_client(cluster, app):
    async def main():
        got: asyncio.Queue = asyncio.Queue()
        channel = unique("own")
        async with RedisPubSub() as pubsub:
            assert pubsub.client.url == app.conf.broker_url
            await pubsub.subscribe(channel, lambda c, m: got.put_nowait(m))
            await pubsub.publish(channel, "hi")
            assert await asyncio.wait_for(got.get(), 10) == "hi"
        assert not pubsub.client.connected  # created by the pubsub, closed with it

    run(main())


def test_disconnecting_the_client_stops_the_reader_with_a_warning(valkey, caplog):
    async def main():
        client = AsyncRedisClient(valkey.url)
        await asyncio.gather(client.connect(), client.connect())  # concurrent connects: one pool
        pubsub = RedisPubSub(client=client)
        await pubsub.subscribe(unique("dc"), lambda c, m: None)
        await client.disconnect()
        await until(lambda: "reader=stopped" in repr(pubsub), message="the reader to stop")
        await pubsub.unsubscribe_all()

    with caplog.at_level(logging.WARNING, logger="celerynb.messaging"):
        run(main())
    assert "its AsyncRedisClient was disconnected" in caplog.text
    assert caplog.text.count("its AsyncRedisClient was disconnected") == 1
