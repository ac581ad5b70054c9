"""celerynb.map: pipelined bulk submission, same messages as apply_async, results all accounted for."""

from __future__ import annotations

import base64
import json
import time

import pytest
from celery import Celery
from celery.result import GroupResult
from conftest import registered, wait_for

import celerynb
from celerynb.bulk import BulkSubmitError
from celerynb.bulk import map as bulk_map
from celerynb.bulk.messages import plain_repr
from celerynb.cluster import server
from celerynb.config import reachability as connectivity
from celerynb.tracking.monitor import get_monitor
from celerynb.workers.base import ArgumentNotSerializable
from celerynb.workers.celery_app import app as nb_app


def _square(x):
    return x * x


def _join(a, b, sep="-"):
    return f"{a}{sep}{b}"


@pytest.fixture(scope="module")
def square():
    """This module's task on celerynb's app, for its tests only (importing the module registers nothing)."""
    with registered(nb_app, _square, "tests.bulk.square") as task:
        yield task


@pytest.fixture(scope="module")
def join():
    with registered(nb_app, _join, "tests.bulk.join") as task:
        yield task


def _queued(app, queue: str = "default") -> list[dict]:
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    finally:
        client.close()


def _comparable(message: dict) -> dict:
    """A message without the fields Celery makes different per task."""
    msg = json.loads(json.dumps(message))
    for key in ("id", "root_id", "argsrepr"):
        msg["headers"].pop(key)
    msg["properties"].pop("correlation_id")
    msg["properties"].pop("delivery_tag")
    msg.pop("body")
    return msg


def _body(message: dict) -> list:
    return json.loads(base64.b64decode(message["body"]))


def test_map_runs_every_item_and_collects_every_result(cluster, square):
    group = bulk_map(square, range(300), chunk=64)
    assert isinstance(group, GroupResult) and len(group.results) == 300
    snaps = get_monitor(nb_app).wait([r.id for r in group.results], timeout=60)
    assert [snaps[r.id].info for r in group.results] == [i * i for i in range(300)]
    assert group.get(timeout=30) == [i * i for i in range(300)]  # Celery's own API still works


def test_progress_and_table_accept_the_group(cluster, square):
    group = bulk_map(square, range(20))
    display = celerynb.progress(group, widget=False)
    assert display.wait(timeout=60) == [i * i for i in range(20)]
    assert "20/20 done" in display.text() and "SUCCESS 20" in display.text()
    table = celerynb.TaskTable(group)
    try:
        assert len(table.rows()) == 20 and {r["state"] for r in table.rows()} == {"SUCCESS"}
    finally:
        table.close()


def test_tuples_unpack_other_items_are_one_argument_kwargs_are_shared(cluster, square, join):
    group = bulk_map(join, [("a", "b"), ("c", "d")], kwargs={"sep": "+"})
    assert group.get(timeout=30) == ["a+b", "c+d"]
    lists = bulk_map(square, [[1, 2]])  # a list is one argument (and list * list fails in the task)
    with pytest.raises(TypeError):
        lists.get(timeout=30)


def test_messages_match_apply_async_except_per_task_fields(app, square, join):
    cluster = celerynb.LocalCluster(workers=0).start()  # nothing consumes: read the queue
    try:
        square.apply_async((7,))
        bulk_map(square, [7, 8], chunk=1)
        bulk_map(join, [("x", "y")], kwargs={"sep": "/"})
        single, first, second, joined = _queued(app)
        assert _comparable(first) == _comparable(single) == _comparable(second)
        assert _body(first) == _body(single)
        assert first["headers"]["argsrepr"] == single["headers"]["argsrepr"] == "(7,)"
        assert first["headers"]["root_id"] == first["headers"]["id"] == first["properties"]["correlation_id"]
        assert joined["headers"]["kwargsrepr"] == "{'sep': '/'}"
        assert _body(joined)[:2] == [["x", "y"], {"sep": "/"}]
    finally:
        cluster.stop()


@pytest.mark.parametrize("args", [(1,), (1, 2.5, True, None), (-(10**30),), (float("inf"),), ()])
def test_plain_repr_is_exactly_celerys_saferepr(args):
    from celery.utils.saferepr import saferepr

    assert plain_repr(args, 1024) == saferepr(args, 1024)


def test_plain_repr_leaves_everything_else_to_celery():
    assert plain_repr(("text",), 1024) is None
    assert plain_repr((10**2000,), 1024) is None


def test_cell_tasks_keep_their_header(app, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = TerminalInteractiveShell.instance()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        shell.run_line_magic("load_ext", "celerynb")
        shell.run_cell_magic("celery_task", "--name tests.bulk_cell", "def cube(x):\n    return x ** 3\n")
        cube = shell.user_ns["cube"]
        cube.delay(2)
        bulk_map(cube, [2, 3])
        single, *mapped = _queued(app)
        assert single["headers"]["celerynb_cell"]
        assert [m["headers"]["celerynb_cell"] for m in mapped] == [single["headers"]["celerynb_cell"]] * 2
        assert _comparable(mapped[0]) == _comparable(single)
    finally:
        cluster.stop()
        shell.run_line_magic("unload_ext", "celerynb")
        app.tasks.pop("tests.bulk_cell", None)
        TerminalInteractiveShell.clear_instance()


def test_unserializable_item_is_named_and_its_chunk_not_sent(app, square):
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        with pytest.raises(ArgumentNotSerializable) as info:
            bulk_map(square, [1, 2, 3, object(), 5], chunk=2)
        assert "item #3" in str(info.value) and "'x'" in str(info.value)
        assert len(_queued(app)) == 2  # the first full chunk went; the chunk with the bad item did not
    finally:
        cluster.stop()


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda square, join: bulk_map(len, [1]), TypeError, "needs a Celery task"),
    (lambda square, join: bulk_map(square, "abc"), TypeError, "wrap it in a list"),
    (lambda square, join: bulk_map(square, [1], chunk=0), ValueError, "chunk must be a positive"),
    (lambda square, join: bulk_map(square, [1], chunk=True), ValueError, "chunk must be a positive"),
    (lambda square, join: bulk_map(join, [(1, 2, 3, 4)]), TypeError, "item #0"),
])
def test_bad_calls_say_what_is_wrong(app, call, error, words, square, join):
    with pytest.raises(error) as info:
        call(square, join)
    assert words in str(info.value)


def test_eager_mode_runs_in_place(app, square):
    app.conf.task_always_eager = True
    group = bulk_map(square, range(5))
    assert [r.get() for r in group.results] == [0, 1, 4, 9, 16]


def test_unreachable_broker_is_a_clear_error_within_seconds(app):
    srv = server.EmbeddedServer().start()
    url = srv.url
    other = Celery("bulk-dead", broker=url, backend=url)
    other.config_from_object("celerynb.workers.settings")
    other.conf.broker_url = other.conf.result_backend = url

    @other.task(name="bulk.dead.noop")
    def noop(x):
        return x

    srv.stop()
    start = time.monotonic()
    with pytest.raises(connectivity.BrokerUnreachable) as info:
        bulk_map(noop, range(10))
    assert time.monotonic() - start < 5
    assert srv.password not in str(info.value) and "redis://:***@" in str(info.value)


def test_broker_dying_mid_map_reports_what_was_sent(app):
    srv = server.EmbeddedServer().start()
    other = Celery("bulk-dies", broker=srv.url, backend=srv.url)
    other.config_from_object("celerynb.workers.settings")
    other.conf.broker_url = other.conf.result_backend = srv.url

    @other.task(name="bulk.dies.noop")
    def noop(x):
        return x

    def items():
        for i in range(100):
            if i == 50:
                srv.stop()
            yield i

    try:
        with pytest.raises(BulkSubmitError) as info:
            bulk_map(noop, items(), chunk=10)
        assert len(info.value.submitted.results) == 50
        assert "50 task(s) were sent" in str(info.value) and srv.password not in str(info.value)
    finally:
        srv.stop()
        get_monitor(other).stop()


def test_rabbitmq_broker_falls_back_to_one_publish_per_message(rabbitmq_url, redis7_url):
    from celerynb.cluster.inkernel import InProcessWorker, stop_workers

    other = Celery("bulk-amqp", broker=rabbitmq_url, backend=redis7_url)
    other.config_from_object("celerynb.workers.settings")
    other.conf.broker_url, other.conf.result_backend = rabbitmq_url, redis7_url
    queue = f"bulk-amqp-{time.time_ns()}"

    @other.task(name="bulk.amqp.square")
    def sq(x):
        return x * x

    worker = InProcessWorker(other, queues=[queue]).start()
    try:
        group = bulk_map(sq, range(40), queue=queue, chunk=7)
        snaps = get_monitor(other).wait([r.id for r in group.results], timeout=60)
        assert [snaps[r.id].info for r in group.results] == [i * i for i in range(40)]
    finally:
        stop_workers([worker])
        get_monitor(other).stop()
        with other.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_map_tracks_ids_with_the_monitor_in_one_step(cluster, square):
    group = bulk_map(square, range(50))
    monitor = get_monitor(nb_app)
    wait_for(lambda: all(monitor.snapshot(r.id).ready for r in group.results), timeout=60,
             message="all 50 tasks seen finished by the monitor without anyone calling track()")


_ITEMS = [7, -3.5, None, True, "naïve <b>%s</b> \"quoted\" \\", ("a", 2), [1, [2, {"k": "v"}]], {"x": 1}, 10**30,
          "x" * 2000]


def _raw(app, queue: str = "default") -> list[str]:
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return [raw.decode() for raw in reversed(client.lrange(queue, 0, -1))]
    finally:
        client.close()


def test_mapped_payloads_are_byte_for_byte_celerys_except_ids(app, join):
    """Each payload ``map`` queues is the one ``apply_async`` queues for the same call, with only
    the task id and kombu's delivery tag different (the template path must never drift)."""
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        for item in _ITEMS:
            join.apply_async(item if isinstance(item, tuple) else (item, "z"), {"sep": "%"})
        bulk_map(join, [item if isinstance(item, tuple) else (item, "z") for item in _ITEMS], kwargs={"sep": "%"},
                 chunk=4)
        raw = _raw(app)
        assert len(raw) == 2 * len(_ITEMS)
        for single, mapped in zip(raw[: len(_ITEMS)], raw[len(_ITEMS):], strict=True):
            s, m = json.loads(single), json.loads(mapped)
            expected = single.replace(s["headers"]["id"], m["headers"]["id"]).replace(
                s["properties"]["delivery_tag"], m["properties"]["delivery_tag"])
            assert mapped == expected
            assert m["headers"]["id"] != s["headers"]["id"]
    finally:
        cluster.stop()


def test_one_lpush_per_chunk(app, square):
    import redis

    cluster = celerynb.LocalCluster(workers=0).start()
    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        square.delay(0)  # the queue is declared, the connection warm
        before = client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
        bulk_map(square, range(1000), chunk=300, batch=1)  # one message per item (auto would batch)
        after = client.info("commandstats")["cmdstat_lpush"]["calls"]
        assert after - before == 4  # 300 + 300 + 300 + 100, not 1000
        assert client.llen("default") == 1001
        ids = [m["headers"]["id"] for m in _queued(app)]
        assert len(set(ids)) == 1001  # every task its own id
    finally:
        client.close()
        cluster.stop()


def test_a_foreign_publish_receiver_sees_every_message(app, square):
    """A ``before_task_publish`` receiver may rewrite each message: map then publishes each the Celery way."""
    from celery.signals import before_task_publish

    seen: list[str] = []

    def stamp(sender=None, headers=None, **_):
        seen.append(headers["id"])
        headers["stamp"] = f"s-{len(seen)}"

    before_task_publish.connect(stamp, weak=False)
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        group = bulk_map(square, range(25), chunk=10)
        queued = _queued(app)
        assert seen == [r.id for r in group.results]
        assert [m["headers"]["stamp"] for m in queued] == [f"s-{i}" for i in range(1, 26)]
    finally:
        before_task_publish.disconnect(stamp)
        cluster.stop()


def test_submit_log_records_every_mapped_task(app, join):
    from celerynb.tracking.submitted import enable_submit_log, submitted

    enable_submit_log()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        group = bulk_map(join, [("a", i) for i in range(30)], kwargs={"sep": ":"})
        entries = [submitted.get(r.id) for r in group.results]
        assert all(e is not None for e in entries)
        assert [e.argsrepr for e in entries] == [repr(("a", i)) for i in range(30)]
        assert {e.kwargsrepr for e in entries} == {"{'sep': ':'}"} and {e.name for e in entries} == {join.name}
    finally:
        cluster.stop()
