"""One test per shim of the package ``celerynb/_compat/``: each fails loudly when a release of Celery,
kombu, ipywidgets or CPython removes or changes what the shim reaches for.

They run against the installed versions, on a real embedded server where a shim needs one.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from celery import Celery, signals
from celery.result import EagerResult
from celery.worker import state

from celerynb import _compat


@pytest.fixture
def plain_app():
    """A throwaway app of our own on the embedded server (never celerynb's shared one)."""
    from celerynb.cluster import server

    url = server.shared_server().url
    app = Celery(f"compat-{uuid.uuid4().hex[:8]}", broker=url, backend=url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    yield app
    app.close()


# -- worker state -------------------------------------------------------------------------------------


def test_request_worker_stop_sets_the_flags_a_worker_loop_reads():
    try:
        _compat.request_worker_stop(cold=False)
        assert state.should_stop == 0 and state.should_terminate is None
        _compat.request_worker_stop(cold=True)
        assert state.should_terminate == 0
    finally:
        _compat.clear_worker_stop_flags()
    # Celery's loop ends when either flag is not None: both must be back to None.
    assert state.should_stop is None and state.should_terminate is None


def test_active_request_ids_reads_the_running_requests():
    class Request:
        id = "compat-running-task"

    request = Request()
    state.active_requests.add(request)
    try:
        assert "compat-running-task" in _compat.active_request_ids()
    finally:
        state.active_requests.discard(request)


def test_allow_result_get_clears_the_join_will_block_flag():
    from celery.result import _set_task_join_will_block, task_join_will_block

    _set_task_join_will_block(True)
    _compat.allow_result_get()
    assert task_join_will_block() is False


def test_revoked_marks_are_shared_with_the_workers_revoke_list():
    tid = f"compat-{uuid.uuid4()}"
    assert not _compat.is_revoked(tid)
    _compat.mark_revoked(tid)
    try:
        assert tid in state.revoked and _compat.is_revoked(tid)
    finally:
        state.revoked.discard(tid)


def test_eager_results_expose_their_value_and_task_name():
    ok = EagerResult("id-1", 42, "SUCCESS", name="compat.add")
    failed = EagerResult("id-2", ValueError("boom"), "FAILURE")
    assert _compat.eager_value(ok) == 42 and _compat.eager_task_name(ok) == "compat.add"
    assert isinstance(_compat.eager_value(failed), ValueError)


# -- which app is current ----------------------------------------------------------------------------


def test_celery_current_apps_reads_this_threads_app_and_the_default_without_creating_one():
    import celery

    saved = _compat.celery_current_apps()
    app = Celery(f"current-{uuid.uuid4().hex[:8]}", set_as_current=False)
    try:
        app.set_current()
        current, default = _compat.celery_current_apps()
        assert current is app and celery.current_app._get_current_object() is app
        seen: list = []
        thread = threading.Thread(target=lambda: seen.append(_compat.celery_current_apps()[0]))
        thread.start()
        thread.join()
        assert seen == [None]  # another thread has no current app of its own
    finally:
        _compat.set_celery_current_apps(*saved)


def test_set_celery_current_apps_puts_back_both_none_included():
    import celery

    saved = _compat.celery_current_apps()
    app = Celery(f"default-{uuid.uuid4().hex[:8]}", set_as_current=False)
    try:
        _compat.set_celery_current_apps(None, app)
        assert celery.current_app._get_current_object() is app  # no current: the default
        _compat.set_celery_current_apps(app, None)
        assert _compat.celery_current_apps() == (app, None)
    finally:
        _compat.set_celery_current_apps(*saved)
    assert _compat.celery_current_apps() == saved


# -- an app moved to new URLs -----------------------------------------------------------------------


def test_drop_app_connection_caches_makes_the_app_build_new_pools(plain_app):
    pool = plain_app.pool
    producer_pool = plain_app.amqp.producer_pool
    backend = plain_app.backend
    for old in _compat.drop_kombu_pools(plain_app.connection_for_write()):
        old.force_close_all()
    assert plain_app.pool is pool  # the app still holds what it cached
    _compat.drop_app_connection_caches(plain_app)
    assert plain_app.pool is not pool
    assert plain_app.amqp.producer_pool is not producer_pool
    assert plain_app.backend is not backend


def test_result_backend_if_created_does_not_create_one(plain_app):
    _compat.drop_app_connection_caches(plain_app)
    assert _compat.result_backend_if_created(plain_app) is None
    backend = plain_app.backend
    assert _compat.result_backend_if_created(plain_app) is backend


def test_take_result_pubsub_detaches_the_redis_result_consumer(plain_app):
    backend = plain_app.backend
    consumer = backend.result_consumer
    consumer.start(f"compat-{uuid.uuid4()}")  # subscribes: the consumer now holds a pub/sub
    assert consumer._pubsub is not None and consumer.subscribed_to
    assert hasattr(consumer, "_pending_unsubscribe")
    pubsub = _compat.take_result_pubsub(backend)
    try:
        assert pubsub is not None and consumer._pubsub is None and not consumer.subscribed_to
    finally:
        pubsub.close()
    assert _compat.take_result_pubsub(backend) is None


def test_drop_kombu_pools_removes_the_process_wide_pools_of_a_url(plain_app):
    from kombu import pools

    connection = plain_app.connection_for_write()
    pools.connections[connection]  # noqa: B018 - creates the pool for this URL
    pools.producers[connection]  # noqa: B018
    removed = _compat.drop_kombu_pools(connection)
    assert len(removed) == 2
    for pool in removed:
        pool.force_close_all()
    assert _compat.drop_kombu_pools(connection) == []


def test_task_registry_is_read_and_replaced_without_finalizing(plain_app):
    registry = _compat.task_registry(plain_app)
    assert not plain_app.finalized and isinstance(registry, dict)
    new = type(registry)(registry)
    _compat.replace_task_registry(plain_app, new)
    assert plain_app.tasks is new


# -- a task's sending path ------------------------------------------------------------------------


def test_exec_options_and_plain_messages(plain_app):
    @plain_app.task(name="compat.limited", soft_time_limit=7)
    def routed():
        return 1

    assert _compat.exec_options(routed)["soft_time_limit"] == 7
    assert _compat.sends_plain_messages(routed)


def test_unproxied_resolves_the_lazy_task_proxy(plain_app):
    @plain_app.task(name="compat.lazy", shared=False)
    def lazy():
        return 1

    resolved = _compat.unproxied(lazy)
    assert type(lazy).__name__ == "PromiseProxy" or resolved is lazy
    assert resolved.name == "compat.lazy" and type(resolved).__name__ != "PromiseProxy"


def test_live_receivers_lists_a_connected_receiver():
    def receiver(**_):
        return None

    signals.before_task_publish.connect(receiver, sender="compat.sender", weak=False)
    try:
        assert receiver in _compat.live_receivers(signals.before_task_publish, "compat.sender")
    finally:
        signals.before_task_publish.disconnect(receiver, sender="compat.sender")
    assert receiver not in _compat.live_receivers(signals.before_task_publish, "compat.sender")


def test_no_result_subscribe_per_task_skips_the_subscribe(plain_app):
    @plain_app.task(name="compat.sent")
    def sent():
        return 1

    consumer = plain_app.backend.result_consumer
    with _compat.no_result_subscribe_per_task(plain_app):
        result = sent.delay()
        assert f"celery-task-meta-{result.id}".encode() not in {
            k if isinstance(k, bytes) else k.encode() for k in consumer.subscribed_to
        }
    other = sent.delay()  # outside: Celery subscribes again
    assert any(other.id in (k.decode() if isinstance(k, bytes) else k) for k in consumer.subscribed_to)
    plain_app.connection_for_write().default_channel.client.delete("celery")  # our messages only


# -- kombu -------------------------------------------------------------------------------------------


def test_redis_channel_internals_used_by_bulk_publishing(plain_app):
    from kombu.utils.json import dumps

    queue = f"compat-{uuid.uuid4().hex[:8]}"
    with plain_app.producer_or_acquire() as producer:
        assert _compat.supports_batch_publish(producer)
        channel = producer.channel
        assert _compat.is_redis_channel(channel)
        with _compat.caught_puts(channel) as caught:
            producer.publish({"x": 1}, routing_key=queue, declare=[], serializer="json")
        assert len(caught) == 1 and caught[0][0] == queue
        client = channel.client
        assert client.llen(queue) == 0  # caught, not sent
        key = _compat.redis_list_key(channel, queue, caught[0][1])
        assert key == queue  # default priority: the plain list
        _compat.put(channel, queue, caught[0][1])
        assert client.llen(queue) == 1
        assert not _compat.queue_expires(channel, queue)
        client.delete(queue)
    assert _compat.json_codec_is(dumps)


def test_redis_queue_lists_are_the_lists_a_worker_takes_from_in_order(plain_app):
    queue = f"compat-{uuid.uuid4().hex[:8]}"
    with plain_app.producer_or_acquire() as producer:
        channel = producer.channel
        lists = _compat.redis_queue_lists(channel, queue)
        assert lists[0] == queue and len(lists) == len(set(lists)) > 1  # priority 0 first, then the others
        producer.publish({"x": 1}, routing_key=queue, declare=[], serializer="json", priority=9)
        assert [channel.client.llen(name) for name in lists].count(1) == 1  # kombu put it in one of them
        assert channel.client.llen(lists[0]) == 0  # not in the default list: priority 9 has its own
        channel.client.delete(*lists)


def test_redis_bound_queues_lists_a_queue_a_client_sent_to(plain_app):
    queue = f"compat-{uuid.uuid4().hex[:8]}"
    with plain_app.connection_for_write() as conn:
        channel = conn.default_channel
        assert queue not in _compat.redis_bound_queues(channel)
        plain_app.send_task("compat.nothing", queue=queue)  # declares the queue, as any client does
        assert queue in _compat.redis_bound_queues(channel)
        channel.client.delete(queue, channel.keyprefix_queue % (queue,))


def test_reuse_redis_clients_gives_a_channel_one_client_for_its_pool(plain_app):
    import redis

    _compat.reuse_redis_clients()
    _compat.reuse_redis_clients()  # idempotent
    queue = f"compat-{uuid.uuid4().hex[:8]}"
    with plain_app.connection_for_write() as conn:
        channel = conn.default_channel
        built = []
        original_init = redis.Redis.__init__

        def counting_init(self, *args, **kwargs):
            built.append(1)
            original_init(self, *args, **kwargs)

        redis.Redis.__init__ = counting_init
        try:
            for n in range(5):
                with channel.conn_or_acquire() as client:
                    client.lpush(queue, n)
        finally:
            redis.Redis.__init__ = original_init
        with channel.conn_or_acquire() as client:
            assert client.llen(queue) == 5  # the same commands reached the server
            client.delete(queue)
        assert len(built) <= 1  # one client, not one per command
        assert channel._create_client(asynchronous=True) is not channel._create_client()


def test_item_results_behave_as_the_tasks_own_async_results(plain_app):
    from celery.result import AsyncResult

    @plain_app.task(name="compat.item")
    def item():
        return None

    ids = [str(uuid.uuid4()) for _ in range(3)]
    made = _compat.item_results(item, ids)
    assert all(isinstance(r, AsyncResult) for r in made) and made == [item.AsyncResult(t) for t in ids]
    assert "_on_ready" not in vars(made[0])  # the promise is not built up front
    plain_app.backend.store_result(ids[0], 42, "SUCCESS")
    assert made[0].get(timeout=10) == 42 and made[0].state == "SUCCESS" and made[1].state == "PENDING"
    seen = []
    made[2].then(lambda r: seen.append(r.id))  # Celery's callbacks use the promise
    assert made[2].on_ready is made[2].on_ready
    made[2].on_ready(made[2])
    assert seen == [ids[2]]


# -- the standard library and ipywidgets ------------------------------------------------------------


def test_run_before_thread_join_at_exit_is_available():
    assert callable(getattr(threading, "_register_atexit", None))


def test_run_before_thread_join_at_exit_runs_before_non_daemon_threads_are_joined():
    import subprocess
    import sys

    code = (
        "import threading, time\n"
        "from celerynb import _compat\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait).start()\n"  # a non-daemon thread the exit would join forever
        "_compat.run_before_thread_join_at_exit(stop.set)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_widget_mimebundle_is_the_widget_view():
    ipywidgets = pytest.importorskip("ipywidgets")
    bundle = _compat.widget_mimebundle(ipywidgets.IntProgress(value=3))
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/plain" in bundle


def test_the_declared_range_starts_at_the_versions_the_shims_were_checked_on():
    """pyproject.toml promises no Celery/kombu/redis-py older than the one _compat was checked on."""
    import re
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, label in (("celery", "celery"), ("kombu", "kombu"), ("redis", "redis-py")):
        spec = next(d for d in declared if re.match(rf"{name}\b", d))
        lowest = re.search(r">=\s*([\d.]+)", spec).group(1)
        checked = re.search(rf"{label} ([\d.]+)", _compat.__doc__).group(1)
        assert checked.split(".")[: len(lowest.split("."))] == lowest.split("."), (
            f"pyproject declares {spec} but _compat was checked on {name} {checked}: narrow the range, "
            "or run the suite on the lowest version too"
        )
        assert Version(version(name)) >= Version(lowest)


def test_reserved_request_ids_reads_the_reserved_requests():
    class Request:
        id = "compat-reserved-task"

    request = Request()
    state.reserved_requests.add(request)
    try:
        assert "compat-reserved-task" in _compat.reserved_request_ids()
    finally:
        state.reserved_requests.discard(request)


def test_unacked_messages_are_listed_and_restored_to_their_queue(plain_app):
    from kombu import Queue

    name = f"compat-unacked-{uuid.uuid4().hex[:8]}"
    with plain_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = Queue(name, routing_key=name)
        with connection.Producer(channel) as producer:
            producer.publish({"n": 1}, routing_key=name, declare=[queue], headers={"id": "compat-unacked-id"},
                             serializer="json")
        message = queue(channel).get(no_ack=False)  # delivered, not acknowledged
        assert message is not None and channel.client.llen(name) == 0
        held = {tag: m for tag, m in _compat.unacked_messages(channel).items()
                if (m.get("headers") or {}).get("id") == "compat-unacked-id"}
        assert len(held) == 1
        _compat.restore_unacked(channel, next(iter(held)))
        assert channel.client.llen(name) == 1
        assert not [m for m in _compat.unacked_messages(channel).values()
                    if (m.get("headers") or {}).get("id") == "compat-unacked-id"]
        channel.client.delete(name)


# -- batched map: items run as tasks of their own ------------------------------------------------------


def test_result_meta_is_the_document_the_backend_stores(plain_app):
    from celery.app.task import Context

    plain_app.conf.result_extended = True
    backend = plain_app.backend
    tid = f"compat-{uuid.uuid4()}"
    request = Context(id=tid, task="compat.add", args=[1, 2], kwargs={}, hostname="h", retries=0, children=[],
                      delivery_info={"routing_key": "q"})
    backend.store_result(tid, 3, "SUCCESS", request=request)
    stored = backend.decode_result(backend.client.get(backend.get_key_for_task(tid)))
    meta = _compat.result_meta(backend, backend.encode_result(3, "SUCCESS"), "SUCCESS", None, request)
    meta["task_id"] = tid
    assert set(meta) == set(stored)
    assert {k: v for k, v in meta.items() if k != "date_done"} == {k: v for k, v in stored.items() if k != "date_done"}
    backend.client.delete(backend.get_key_for_task(tid))


def test_plain_json_encoder_writes_what_the_backend_encodes_and_only_for_kombus_json(plain_app):
    import datetime

    backend = plain_app.backend
    document = {"status": "SUCCESS", "result": {"when": datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC),
                                                "text": "naïve ☃", "raw": b"\xff"}, "task_id": "t"}
    encode = _compat.plain_json_encoder(backend)
    assert encode is not None and encode(document) == backend.encode(document)

    class OwnEncoding(type(backend)):
        def encode(self, data):
            return "mine"

    assert _compat.plain_json_encoder(OwnEncoding(app=plain_app, url=plain_app.conf.result_backend)) is None
    plain_app.conf.result_serializer = "yaml"
    assert _compat.plain_json_encoder(type(backend)(app=plain_app, url=plain_app.conf.result_backend)) is None


def test_item_requests_make_each_item_the_request_and_the_task_current(plain_app):
    from celery import current_task
    from celery.app.task import Context

    @plain_app.task(name="compat.current", bind=True)
    def current(self):
        return self.request.id, current_task._get_current_object()

    task = plain_app.tasks["compat.current"]
    before, outer = current_task._get_current_object(), task.request
    seen = []
    with _compat.item_requests(task, Context(id="batch")) as set_request:
        for item in ("a", "b", "c"):
            set_request(Context(id=item))
            seen.append(task.run())
    assert seen == [("a", task), ("b", task), ("c", task)]
    assert current_task._get_current_object() is before and task.request.id == outer.id  # both popped


def test_route_redis_result_stores_sees_every_state_and_falls_back_to_celerys(plain_app):
    from celerynb.workers import result_store

    seen = []

    def store(backend, task_id, result, state, traceback, request):
        seen.append((task_id, result, state))
        return task_id.startswith("ours")

    _compat.route_redis_result_stores(store)
    backend = plain_app.backend
    ours, celerys = f"ours-{uuid.uuid4()}", f"celerys-{uuid.uuid4()}"
    try:
        backend.store_result(ours, 1, "SUCCESS")
        backend.store_result(celerys, 2, "SUCCESS")
        assert seen == [(ours, 1, "SUCCESS"), (celerys, 2, "SUCCESS")]
        assert backend.client.get(backend.get_key_for_task(ours)) is None  # taken by store()
        assert plain_app.AsyncResult(celerys).get(timeout=5) == 2  # stored by Celery itself
    finally:
        result_store.install()  # what the rest of the session runs with
        backend.client.delete(backend.get_key_for_task(celerys))


def test_explain_result_errors_replaces_the_timeout_only_when_explained(plain_app):
    from celery.exceptions import TimeoutError as ResultTimeout

    from celerynb.tracking import submitted

    _compat.explain_result_errors(explain=lambda backend, task_id: "why" if task_id == "explained" else None)
    try:
        with pytest.raises(ResultTimeout, match="^why$"):
            plain_app.AsyncResult("explained").get(timeout=0.2)
        with pytest.raises(ResultTimeout, match="timed out"):
            plain_app.AsyncResult("other").get(timeout=0.2)
    finally:
        _compat.explain_result_errors(explain=submitted.explain_timeout)  # what the rest of the session runs with


def _stored_elsewhere(plain_app, task_id: str, value, publish: bool = True) -> None:
    """``task_id`` SUCCESS with ``value``, stored by another client (pushed to subscribers unless not ``publish``)."""
    other = Celery(f"compat-other-{uuid.uuid4().hex[:8]}", backend=plain_app.conf.result_backend, set_as_current=False)
    try:
        if publish:
            other.backend.store_result(task_id, value, "SUCCESS")
        else:  # the document alone, as if its message was lost
            meta = {"status": "SUCCESS", "result": value, "traceback": None, "children": [], "task_id": task_id}
            other.backend.client.set(other.backend.get_key_for_task(task_id), other.backend.encode(meta), ex=60)
    finally:
        other.close()


def test_skip_redundant_result_reads_waits_for_the_push_and_reads_late_when_it_is_lost(plain_app):
    from conftest import command_calls, commands_sent

    _compat.skip_redundant_result_reads()  # idempotent: celerynb installs it on import
    url, backend = plain_app.conf.result_backend, plain_app.backend
    pushed = plain_app.send_task("compat.never-consumed")  # subscribed as it is sent
    before = command_calls(url)
    threading.Timer(0.2, _stored_elsewhere, (plain_app, pushed.id, 5)).start()
    assert pushed.get(timeout=30) == 5
    assert commands_sent(before, command_calls(url)).get("get", 0) == 0  # Celery's read first: one GET

    lost = plain_app.send_task("compat.never-consumed")
    _stored_elsewhere(plain_app, lost.id, 6, publish=False)
    assert lost.get(timeout=30) == 6  # read once, a second later, instead of waiting for ever

    short = plain_app.send_task("compat.never-consumed")
    _stored_elsewhere(plain_app, short.id, 7, publish=False)
    assert short.get(timeout=2) == 7  # a short timeout reads first, as Celery does
    for result in (pushed, lost, short):
        backend.client.delete(backend.get_key_for_task(result.id))
    plain_app.connection_for_write().default_channel.client.delete("celery")  # our messages only


def test_act_on_clicks_at_once_routes_a_widgets_messages_to_their_own_subshell(kernel):
    """ipykernel 7.4 routes a comm message by ``Comm._reply_subshell_for(data, default)``, default being
    the subshell it came on; made from the main shell, a widget's comm answers the main shell (None)."""
    version = kernel.run("import ipykernel\nprint(ipykernel.__version__)").stdout.strip()
    if tuple(int(x) for x in version.split(".")[:2]) < (7, 4):  # routed otherwise: the shim does nothing
        assert kernel.run("import ipywidgets as w\nfrom celerynb import _compat\n"
                          "_compat.act_on_clicks_at_once(w.Button())").status == "ok"
        pytest.skip(f"ipykernel {version} has no Comm._reply_subshell_for (7.4 has)")
    reply = kernel.run(
        "import ipywidgets as w\nfrom celerynb import _compat\n"
        "plain, ours = w.Button(), w.Button()\n_compat.act_on_clicks_at_once(ours)\n"
        "print(plain.comm._reply_subshell_for({}, 'sub-1'), ours.comm._reply_subshell_for({}, 'sub-1'))")
    assert reply.status == "ok", reply.error
    assert reply.stdout.split() == ["None", "sub-1"]
