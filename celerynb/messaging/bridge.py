"""The guide's Redis-to-Celery bridge, made production-grade.

Requests arrive as JSON on a Redis channel, ``{"document_id": "doc1", "options": {...}}``;
each one is answered exactly once:

* accepted: ``{"status": "processing", "task_id": ...}`` on the ack channel at once, then
  ``{"status": "completed", "result": ...}`` or ``{"status": "failed", "error": ...}`` on the
  results channel when the task ends (waited for in its own asyncio task, so the handler
  returns at once and a slow task never holds up other requests);
* malformed (not JSON, not an object, no ``document_id``, options not an object):
  ``{"status": "rejected", "reason": ..., "request": <the raw text>}`` on the results channel;
* not submittable (broker down): ``{"status": "failed", "error": ...}`` on the results channel.

An optional ``request_id`` in a request is echoed in every answer, so that clients can match
answers to requests. When the bridge stops, tasks still running are answered
``{"status": "abandoned"}`` (their results stay in the result backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from typing import Any

from celery.result import AsyncResult

from celerynb import _compat, config
from celerynb.messaging.client import AsyncRedisClient
from celerynb.messaging.pubsub import RedisPubSub
from celerynb.tracking.awaiting import wait as results_wait

logger = logging.getLogger("celerynb.messaging.bridge")

_MAX_ECHO = 500  # characters of a rejected request echoed back
CLIENT_NAME = "celerynb-bridge"  # shown by CLIENT LIST for the connections the bridge opens
_HANDLER_GRACE = 5.0  # seconds a request being submitted may take to finish when the bridge stops


class _Rejected(ValueError):
    def __init__(self, reason: str, **ids: Any) -> None:
        super().__init__(reason)
        self.ids = {k: v for k, v in ids.items() if v is not None}


def _parse(message: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(document_id, options, ids to echo) of a request, or :class:`_Rejected` with the reason."""
    try:
        data = json.loads(message)
    except ValueError as exc:
        raise _Rejected(f"the request is not JSON ({exc.args[0] if exc.args else exc})") from None
    if not isinstance(data, dict):
        raise _Rejected(f"the request must be a JSON object, not {type(data).__name__}")
    request_id = data.get("request_id")
    ids = {"request_id": request_id} if request_id is not None else {}
    document_id = data.get("document_id")
    if document_id is None or document_id == "":
        raise _Rejected("the request has no document_id", **ids)
    if not isinstance(document_id, str):
        raise _Rejected(f"document_id must be a string, not {type(document_id).__name__}", **ids)
    options = data.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise _Rejected(f"options must be a JSON object, not {type(options).__name__}", document_id=document_id, **ids)
    return document_id, options, ids


class _Bridge:
    """State of one running bridge: the follow-up tasks of accepted requests."""

    def __init__(self, pubsub: RedisPubSub, task: Any, acks: str, results: str, result_timeout: float | None) -> None:
        self.pubsub = pubsub
        self.task = task
        self.acks = acks
        self.results = results
        self.result_timeout = result_timeout
        self.followers: dict[asyncio.Task, dict[str, Any]] = {}
        self.counts = {"received": 0, "rejected": 0, "accepted": 0, "completed": 0, "failed": 0, "abandoned": 0}

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        try:
            await self.pubsub.publish(channel, json.dumps(payload, default=str))
        except Exception as exc:  # noqa: BLE001 - log loudly rather than lose the answer silently
            logger.error("bridge could not publish %s on %r: %s", payload, channel, config.mask_text(str(exc)))

    async def on_request(self, channel: str, message: str) -> None:
        self.counts["received"] += 1
        try:
            document_id, options, ids = _parse(message)
        except _Rejected as rejected:
            self.counts["rejected"] += 1
            logger.info("bridge rejected a request: %s", rejected)
            await self.publish(self.results, {**rejected.ids, "status": "rejected", "reason": str(rejected),
                                              "request": message[:_MAX_ECHO]})
            return
        base = {**ids, "document_id": document_id}
        try:
            result = await asyncio.to_thread(self._submit, document_id, options)
        except Exception as exc:  # noqa: BLE001 - broker down, bad routing: answer, do not crash
            self.counts["failed"] += 1
            await self.publish(self.results, {**base, "status": "failed", "error": f"could not submit the task: "
                                              f"{config.mask_text(str(exc))}", "error_type": type(exc).__name__})
            return
        self.counts["accepted"] += 1
        base["task_id"] = result.id
        await self.publish(self.acks, {**base, "status": "processing"})
        follower = asyncio.get_running_loop().create_task(self._follow(result, base))
        self.followers[follower] = base
        follower.add_done_callback(lambda t: self.followers.pop(t, None))

    def _submit(self, document_id: str, options: dict[str, Any]) -> AsyncResult:
        """Send the task, in a thread of the loop's executor: a broker that is slow to answer
        (connecting, an outage until the socket times out) must not stop the event loop.
        No result subscription per task: the shared monitor reports the end (see ``_wait``)."""
        app = getattr(self.task, "app", None)
        with _compat.no_result_subscribe_per_task(app) if app is not None else contextlib.nullcontext():
            return self.task.apply_async((document_id, options))

    async def _follow(self, result: AsyncResult, base: dict[str, Any]) -> None:
        try:
            value = await self._wait(result)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.counts["failed"] += 1
            answer = {**base, "status": "failed", "error": f"no result within {self.result_timeout} s",
                      "error_type": "TimeoutError"}
        except Exception as exc:  # noqa: BLE001 - the task's own exception, re-raised by wait()
            self.counts["failed"] += 1
            answer = {**base, "status": "failed", "error": str(exc), "error_type": type(exc).__name__}
        else:
            self.counts["completed"] += 1
            answer = {**base, "status": "completed", "result": value}
        finally:
            _release(result)
        await self.publish(self.results, answer)

    async def _wait(self, result: AsyncResult) -> Any:
        # The shared monitor pushes the end of the task (no polling loop per request).
        return await results_wait(result, timeout=self.result_timeout)

    async def drain(self, timeout: float) -> None:
        """Let follow-ups still waiting finish, up to ``timeout`` seconds."""
        if self.followers and timeout > 0:
            await asyncio.wait(list(self.followers), timeout=timeout)

    async def abandon(self) -> None:
        """Cancel the follow-ups left and answer them ``abandoned``: nothing goes unanswered."""
        left = dict(self.followers)
        for follower in left:
            follower.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        for base in left.values():
            self.counts["abandoned"] += 1
            await self.publish(self.results, {**base, "status": "abandoned", "reason": "the bridge stopped before "
                                              "the task ended; its result stays in the result backend"})


async def redis_celery_bridge(
    redis: AsyncRedisClient | None = None,
    *,
    requests: str = "processing:requests",
    acks: str = "processing:ack",
    results: str = "processing:results",
    task: Any = None,
    stop_event: asyncio.Event | None = None,
    result_timeout: float | None = None,
    drain_timeout: float = 10.0,
) -> dict[str, int]:
    """Turn requests published on ``requests`` into Celery tasks and publish their outcome.

    Runs until ``stop_event`` is set (then waits up to ``drain_timeout`` seconds for tasks
    already accepted) or until cancelled (then answers those ``abandoned`` at once). Either
    way it unsubscribes and closes the connections it opened. Tasks are submitted in a thread
    (``asyncio.to_thread``), so that a broker slow to answer never stops the event loop; with
    celerynb's fail-fast broker settings an outage answers ``failed`` within a few seconds.

    Args:
        redis: where requests and answers travel; default: the Celery app's Redis.
        requests, acks, results: channel names (the guide's by default).
        task: the Celery task to submit as ``task.apply_async((document_id, options))``;
            default ``celerynb.workers.tasks.process_document``.
        stop_event: an :class:`asyncio.Event` that stops the bridge when set.
        result_timeout: seconds to wait for each task before answering ``failed``; None waits.
        drain_timeout: seconds to wait for accepted tasks after ``stop_event`` is set.

    Returns:
        Counts of what happened: received, rejected, accepted, completed, failed, abandoned.
    """
    if stop_event is not None and not inspect.iscoroutinefunction(getattr(stop_event, "wait", None)):
        raise TypeError(f"stop_event must be an asyncio.Event, not {type(stop_event).__name__}.")
    if task is None:
        from celerynb.workers.tasks import process_document as task
    if not callable(getattr(task, "apply_async", None)):
        raise TypeError(f"task must be a Celery task (something with apply_async), not {task!r}.")
    own_client = redis is None
    client = redis or AsyncRedisClient(client_name=CLIENT_NAME)
    await client.connect()
    pubsub = RedisPubSub(client=client)
    bridge = _Bridge(pubsub, task, acks, results, result_timeout)
    try:
        await pubsub.subscribe(requests, bridge.on_request, pattern=False)
        logger.info("bridge listening on %r (acks %r, results %r)", requests, acks, results)
        if stop_event is None:
            await asyncio.get_running_loop().create_future()  # until cancelled
        else:
            await stop_event.wait()
        await pubsub.unsubscribe_all(cancel_handlers=False)
        await pubsub.drain(drain_timeout)
        await bridge.drain(drain_timeout)
    finally:
        # Requests already received finish their submit and ack (a second or so at most).
        await pubsub.unsubscribe_all(cancel_handlers=False)
        await pubsub.drain(_HANDLER_GRACE)
        await pubsub.unsubscribe_all()
        await bridge.abandon()
        if own_client:
            await client.disconnect()
    return dict(bridge.counts)


def _release(result: AsyncResult) -> None:
    """Drop the result channel subscription Celery's Redis backend made when the task was sent.

    Otherwise it lasts until the AsyncResult is garbage collected, one per request for the
    bridge's lifetime, and the unsubscribe may then run after the server is gone.
    """
    remove = getattr(result.backend, "remove_pending_result", None)
    if remove is not None:
        try:
            remove(result)
        except Exception:  # noqa: BLE001 - server already gone: nothing left to release
            pass
