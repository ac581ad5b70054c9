"""The Redis-to-Celery bridge end to end: embedded server, in-kernel worker, real pub/sub."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest
import redis as redis_sync
from celery import Celery

from celerynb.cluster.server import free_port
from celerynb.messaging.bridge import redis_celery_bridge
from celerynb.messaging.redis import AsyncRedisClient, RedisPubSub


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate, timeout: float = 30.0, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.02)


class Listener:
    """Collects every JSON message on the ack and results channels."""

    def __init__(self, url: str, acks: str, results: str) -> None:
        self.client = AsyncRedisClient(url)
        self.pubsub = RedisPubSub(client=self.client)
        self.channels = (acks, results)
        self.acks: list[dict] = []
        self.results: list[dict] = []

    async def __aenter__(self) -> Listener:
        async def on_ack(channel, message):
            self.acks.append(json.loads(message))

        async def on_result(channel, message):
            self.results.append(json.loads(message))

        await self.client.connect()
        await self.pubsub.subscribe(self.channels[0], on_ack)
        await self.pubsub.subscribe(self.channels[1], on_result)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.pubsub.unsubscribe_all()
        await self.client.disconnect()


def channels() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"requests": f"req:{tag}", "acks": f"ack:{tag}", "results": f"res:{tag}"}


async def wait_subscribed(client: AsyncRedisClient, channel: str) -> None:
    deadline = time.monotonic() + 30
    while (await client.pubsub_numsub(channel))[0][1] < 1:
        assert time.monotonic() < deadline, f"nobody subscribed to {channel}"
        await asyncio.sleep(0.02)


def make_requests() -> list[tuple[str, str, str]]:
    """100 requests: (key to count answers by, raw message, expected final status)."""
    docs = ["doc1", "doc2", "doc3", "welcome", "document-123"]
    formats = ["json", "text", "markdown", "html"]
    out = []
    for i in range(70):
        rid = f"ok-{i}"
        body = {"request_id": rid, "document_id": docs[i % 5], "options": {"format": formats[i % 4]}}
        out.append((rid, json.dumps(body), "completed"))
    for i in range(10):
        rid = f"badfmt-{i}"
        out.append((rid, json.dumps({"request_id": rid, "document_id": "doc1", "options": {"format": "pdf"}}), "failed"))
    for i in range(5):
        rid = f"missing-doc-{i}"
        out.append((rid, json.dumps({"request_id": rid, "document_id": f"no-such-document-{i}"}), "failed"))
    malformed = [
        ("raw:not-json", "this is not json", "rejected"),
        ("raw:array", json.dumps(["doc1"]), "rejected"),
        ("raw:string", json.dumps("doc1"), "rejected"),
        ("raw:null", "null", "rejected"),
        ("raw:empty", "", "rejected"),
        ("nodoc-1", json.dumps({"request_id": "nodoc-1", "options": {}}), "rejected"),
        ("nodoc-2", json.dumps({"request_id": "nodoc-2", "document_id": ""}), "rejected"),
        ("nodoc-3", json.dumps({"request_id": "nodoc-3", "document_id": None}), "rejected"),
        ("intdoc", json.dumps({"request_id": "intdoc", "document_id": 42}), "rejected"),
        ("badopts-1", json.dumps({"request_id": "badopts-1", "document_id": "doc1", "options": [1]}), "rejected"),
        ("badopts-2", json.dumps({"request_id": "badopts-2", "document_id": "doc1", "options": "fast"}), "rejected"),
        ("raw:truncated", '{"document_id": "doc1"', "rejected"),
        ("raw:number", "12345", "rejected"),
        ("raw:nested", json.dumps([{"document_id": "doc1"}]), "rejected"),
        ("nodoc-4", json.dumps({"request_id": "nodoc-4", "doc": "doc1"}), "rejected"),
    ]
    out += malformed
    assert len(out) == 100
    return out


def key_of(answer: dict) -> str:
    return answer.get("request_id") or f"raw:{answer.get('request', '')}"


def test_bridge_answers_100_requests_exactly_once(cluster, app):
    names = channels()
    requests = make_requests()
    raw_keys = {raw: key for key, raw, _ in requests if key.startswith("raw:")}

    def normalise(answer: dict) -> str:
        if "request_id" in answer:
            return answer["request_id"]
        return raw_keys.get(answer.get("request"), f"unexpected:{answer}")

    async def main():
        url = app.conf.broker_url
        stop = asyncio.Event()
        async with Listener(url, names["acks"], names["results"]) as listener:
            bridge = asyncio.create_task(redis_celery_bridge(stop_event=stop, **names))
            await wait_subscribed(listener.client, names["requests"])
            for _key, raw, _status in requests:
                assert await listener.client.publish(names["requests"], raw) == 1
            await until(lambda: len(listener.results) >= 100, timeout=90, message="100 answers")
            stop.set()
            counts = await asyncio.wait_for(bridge, 30)
            assert (await listener.client.pubsub_numsub(names["requests"]))[0][1] == 0  # unsubscribed
            return listener.acks, listener.results, counts

    acks, results, counts = run(main())
    result_keys = Counter(normalise(r) for r in results)
    ack_keys = Counter(normalise(a) for a in acks)
    expected = {key: status for key, _raw, status in requests}
    assert result_keys == Counter(expected.keys()), "every request answered exactly once on the results channel"
    accepted = {k for k, s in expected.items() if s != "rejected"}
    assert ack_keys == Counter(accepted), "every accepted request acknowledged exactly once"
    by_key = {normalise(r): r for r in results}
    for key, status in expected.items():
        assert by_key[key]["status"] == status, (key, by_key[key])
    for ack in acks:
        assert ack["status"] == "processing" and ack["task_id"] == by_key[ack["request_id"]]["task_id"]
    done = by_key["ok-0"]
    assert done["document_id"] == "doc1" and done["result"]["document_id"] == "doc1"
    assert done["result"]["format"] == "json" and done["result"]["word_count"] > 0
    assert "Unknown format 'pdf'" in by_key["badfmt-0"]["error"] and by_key["badfmt-0"]["error_type"] == "ValueError"
    assert "no-such-document-0" in by_key["missing-doc-0"]["error"]
    assert "not JSON" in by_key["raw:not-json"]["reason"]
    assert "must be a JSON object, not list" in by_key["raw:array"]["reason"]
    assert "no document_id" in by_key["nodoc-1"]["reason"]
    assert "document_id must be a string, not int" in by_key["intdoc"]["reason"]
    assert "options must be a JSON object, not list" in by_key["badopts-1"]["reason"]
    assert by_key["badopts-1"]["document_id"] == "doc1"
    assert counts == {"received": 100, "rejected": 15, "accepted": 85, "completed": 70, "failed": 15, "abandoned": 0}


def test_cancelled_bridge_answers_unfinished_tasks_abandoned(cluster, app):
    """A task no worker consumes never ends: cancelling the bridge still answers its request."""
    from celerynb.workers.tasks import process_document

    names = channels()
    nowhere = process_document.s().set(queue=f"celerynb-test-nowhere-{uuid.uuid4().hex[:6]}")

    async def main():
        async with Listener(app.conf.broker_url, names["acks"], names["results"]) as listener:
            bridge = asyncio.create_task(redis_celery_bridge(task=nowhere, **names))
            await wait_subscribed(listener.client, names["requests"])
            await listener.client.publish(names["requests"], json.dumps({"document_id": "doc1", "request_id": "r1"}))
            await until(lambda: listener.acks, message="the ack")
            bridge.cancel()
            with pytest.raises(asyncio.CancelledError):
                await bridge
            await until(lambda: listener.results, message="the abandoned answer")
            assert (await listener.client.pubsub_numsub(names["requests"]))[0][1] == 0
            return listener.acks, listener.results

    acks, results = run(main())
    assert [a["request_id"] for a in acks] == ["r1"]
    assert len(results) == 1 and results[0]["status"] == "abandoned"
    assert results[0]["task_id"] == acks[0]["task_id"] and "result backend" in results[0]["reason"]


def test_result_timeout_answers_failed(cluster, app):
    from celerynb.workers.tasks import process_document

    names = channels()
    nowhere = process_document.s().set(queue=f"celerynb-test-nowhere-{uuid.uuid4().hex[:6]}")

    async def main():
        stop = asyncio.Event()
        async with Listener(app.conf.broker_url, names["acks"], names["results"]) as listener:
            bridge = asyncio.create_task(redis_celery_bridge(task=nowhere, stop_event=stop, result_timeout=0.3, **names))
            await wait_subscribed(listener.client, names["requests"])
            await listener.client.publish(names["requests"], json.dumps({"document_id": "doc2"}))
            await until(lambda: listener.results, message="the timeout answer")
            stop.set()
            await asyncio.wait_for(bridge, 30)
            return listener.results

    (answer,) = run(main())
    assert answer["status"] == "failed" and answer["error_type"] == "TimeoutError"
    assert answer["document_id"] == "doc2"


def test_unreachable_broker_answers_failed_instead_of_crashing(cluster, app):
    """A real Celery app whose broker is down: the submit fails, the request is still answered."""
    dead = Celery("dead-broker", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    dead.conf.task_publish_retry = False
    dead.conf.broker_connection_retry = False
    dead.conf.broker_transport_options = {"max_retries": 0}
    dead.conf.redis_socket_connect_timeout = 0.5

    @dead.task(name="dead.process")
    def process(document_id, options=None):  # pragma: no cover - never runs
        return document_id

    names = channels()

    async def main():
        stop = asyncio.Event()
        async with Listener(app.conf.broker_url, names["acks"], names["results"]) as listener:
            bridge = asyncio.create_task(redis_celery_bridge(task=process, stop_event=stop, **names))
            await wait_subscribed(listener.client, names["requests"])
            await listener.client.publish(names["requests"], json.dumps({"document_id": "doc3"}))
            await until(lambda: listener.results, timeout=60, message="the failure answer")
            stop.set()
            counts = await asyncio.wait_for(bridge, 30)
            return listener.acks, listener.results, counts

    acks, results, counts = run(main())
    assert acks == []
    assert results[0]["status"] == "failed" and "could not submit" in results[0]["error"]
    assert counts["failed"] == 1 and counts["accepted"] == 0


def test_event_loop_keeps_running_while_a_send_waits_for_a_slow_broker(cluster, app):
    """A broker that accepts connections and never answers: while the bridge's submit waits for
    it, other coroutines on the bridge's loop keep running (the send used to block the loop)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
    slow = Celery("slow-broker", broker=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", set_as_current=False)
    slow.conf.task_publish_retry = False
    slow.conf.broker_connection_retry = False
    slow.conf.broker_transport_options = {"max_retries": 0, "socket_timeout": 2, "socket_connect_timeout": 2}

    @slow.task(name="slow.process")
    def process(document_id, options=None):  # pragma: no cover - never runs
        return document_id

    names = channels()
    ticks: list[float] = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        stop = asyncio.Event()
        async with Listener(app.conf.broker_url, names["acks"], names["results"]) as listener:
            bridge = asyncio.create_task(redis_celery_bridge(task=process, stop_event=stop, **names))
            await wait_subscribed(listener.client, names["requests"])
            counting = asyncio.create_task(ticker())
            sent = time.monotonic()
            await listener.client.publish(names["requests"], json.dumps({"document_id": "doc1"}))
            await until(lambda: listener.results, timeout=60, message="the failure answer")
            answered = time.monotonic()
            counting.cancel()
            stop.set()
            await asyncio.wait_for(bridge, 30)
            return sent, answered, listener.results

    try:
        sent, answered, results = run(main())
    finally:
        silent.close()
    assert results[0]["status"] == "failed" and "could not submit" in results[0]["error"]
    assert answered - sent >= 1.5, "the broker was not slow: the test proves nothing"
    during = [t for t in ticks if sent <= t <= answered]
    gaps = [b - a for a, b in zip([sent, *during], [*during, answered], strict=True)]
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.2f} s during the send"


def test_bridge_rejects_bad_arguments():
    async def main():
        import threading

        with pytest.raises(TypeError, match="asyncio.Event"):
            await redis_celery_bridge(stop_event=threading.Event())
        with pytest.raises(TypeError, match="Celery task"):
            await redis_celery_bridge(task=print)

    run(main())


def test_own_client_is_closed_after_stop(cluster, app):
    """With no client given the bridge opens one on the app's server (named) and closes it on stop."""
    from celerynb.messaging.bridge import CLIENT_NAME

    names = channels()
    probe = redis_sync.Redis.from_url(app.conf.broker_url)

    def bridge_connections() -> int:
        return sum(1 for c in probe.client_list() if c.get("name") == CLIENT_NAME)

    async def main():
        stop = asyncio.Event()
        bridge = asyncio.create_task(redis_celery_bridge(stop_event=stop, **names))
        async with AsyncRedisClient(app.conf.broker_url) as client:
            await wait_subscribed(client, names["requests"])
        assert bridge_connections() >= 1
        stop.set()
        await asyncio.wait_for(bridge, 30)

    try:
        run(main())
        assert bridge_connections() == 0
    finally:
        probe.close()


@pytest.mark.external
def test_bridge_over_a_separate_redis7(cluster, app):
    """Requests and answers on the machine's Redis 7 (db 14) while Celery runs on the embedded server."""
    from conftest import own_keys_only, reachable

    if not reachable("127.0.0.1", 6379):
        pytest.skip("Redis 7 on 127.0.0.1:6379 is not reachable")
    url = "redis://127.0.0.1:6379/14"
    names = channels()
    requests = [json.dumps({"request_id": f"r{i}", "document_id": f"doc{i % 3 + 1}"}) for i in range(10)]
    requests += ["{broken", json.dumps({"request_id": "x"})]

    async def main():
        stop = asyncio.Event()
        async with Listener(url, names["acks"], names["results"]) as listener:
            messaging = AsyncRedisClient(url)
            bridge = asyncio.create_task(redis_celery_bridge(messaging, stop_event=stop, **names))
            await wait_subscribed(listener.client, names["requests"])
            for raw in requests:
                await listener.client.publish(names["requests"], raw)
            await until(lambda: len(listener.results) >= 12, message="12 answers")
            stop.set()
            counts = await asyncio.wait_for(bridge, 30)
            assert messaging.connected  # a client passed in stays open: its owner closes it
            await messaging.disconnect()
            return listener.acks, listener.results, counts

    with own_keys_only(url):
        acks, results, counts = run(main())
    statuses = Counter(r["status"] for r in results)
    assert statuses == {"completed": 10, "rejected": 2}
    assert sorted(a["request_id"] for a in acks) == sorted(f"r{i}" for i in range(10))
    assert counts["received"] == 12
