"""celerynb.map with batches: many items per message, each item its own task id and result.

Real servers and workers: in-kernel threads (``LocalCluster()``) and ``celery worker``
processes (``add_process``), the latter killed by PID where a test needs a crash. Messages are
counted by behaviour: Celery's ``task_received`` signal in the kernel's own workers, ``inspect
stats`` for worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from celery import signals
from conftest import wait_for

import celerynb
from celerynb.bulk import batched
from celerynb.display._base import cancel_tasks
from celerynb.tracking.monitor import get_monitor
from celerynb.workers import batch as batch_task
from celerynb.workers.base import ArgumentNotSerializable
from celerynb.workers.batch_results import GATHER_MAX, ResultBuffer, gathered_channel

_TASKS = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from celerynb.workers.celery_app import app


    class Odd(ValueError):
        pass


    @app.task(name="batchmap.inc")
    def inc(x):
        return x + 1


    @app.task(name="batchmap.check")
    def check(x):
        if x % 3 == 0:
            raise Odd(f"odd {x}")
        if x % 3 == 1:
            raise KeyError(x)
        return x


    @app.task(name="batchmap.whoami", bind=True)
    def whoami(self, x):
        self.update_state(state="PROGRESS", meta={"x": x})
        return self.request.id


    @app.task(name="batchmap.gated", bind=True)
    def gated(self, key, marker_dir):
        Path(marker_dir, key).write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while key == "gate" and not Path(marker_dir, "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return key


    @app.task(name="batchmap.crashy", acks_late=True, reject_on_worker_lost=True)
    def crashy(key, marker_dir):
        path = Path(marker_dir) / key
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        attempts = len(path.read_text().split())
        if key == "victim" and attempts == 1:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the test SIGKILLs this process here
                time.sleep(0.05)
        return {"key": key, "attempts": attempts}


    @app.task(name="batchmap.flaky", bind=True)
    def flaky(self, x):
        if self.request.retries < 2:
            raise self.retry(countdown=0.01)
        return [x, self.request.retries]


    @app.task(name="batchmap.slow")
    def slow(x):
        time.sleep(0.25)
        return x
    """
)


@pytest.fixture(scope="module")
def tasks_module(tmp_path_factory):
    """Tasks importable by this process and by worker processes (``--include``)."""
    folder = tmp_path_factory.mktemp("batchmap_tasks")
    (folder / "batchmap_tasks.py").write_text(_TASKS)
    sys.path.insert(0, str(folder))
    import batchmap_tasks

    yield batchmap_tasks, folder
    sys.path.remove(str(folder))


@pytest.fixture
def tasks(tasks_module):
    return tasks_module[0]


@pytest.fixture
def received():
    """Names of the messages the kernel's own workers received (Celery's ``task_received``)."""
    names: list[str] = []
    lock = threading.Lock()

    def on_received(request=None, **_):
        with lock:
            names.append(request.name)

    signals.task_received.connect(on_received, weak=False)
    yield names
    signals.task_received.disconnect(on_received)


def _process_cluster(folder: Path, concurrency: int = 1):
    cluster = celerynb.LocalCluster(workers=0).start()
    proc = cluster.add_process(concurrency=concurrency, extra_args=["--include", "batchmap_tasks"],
                               env={"PYTHONPATH": str(folder)})
    return cluster, proc


def _queued(app, queue: str = "default") -> list[dict]:
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    finally:
        client.close()


def _body(message: dict) -> list:
    import base64

    return json.loads(base64.b64decode(message["body"]))


# -- in-kernel workers ---------------------------------------------------------------------------
def test_results_in_order_each_item_its_own_task(cluster, tasks, received):
    group = celerynb.map(tasks.whoami, range(50), batch=8)
    ids = [r.id for r in group.results]
    assert len(set(ids)) == 50
    assert group.get(timeout=30) == ids  # self.request.id inside the task is the item's own id
    assert received.count(batch_task.NAME) == 7 and tasks.whoami.name not in received  # ceil(50 / 8)
    assert celerynb.map(tasks.inc, range(300), batch=7).get(timeout=30) == [i + 1 for i in range(300)]


def test_each_item_fails_on_its_own_with_its_exception_type(cluster, tasks):
    group = celerynb.map(tasks.check, range(12), batch=5)
    display = celerynb.progress(group, widget=False)
    display.wait(timeout=30)
    for x, result in enumerate(group.results):
        if x % 3 == 0:
            with pytest.raises(tasks.Odd, match=f"odd {x}"):
                result.get(timeout=10)
            assert "Odd" in result.traceback and "raise Odd" in result.traceback
        elif x % 3 == 1:
            with pytest.raises(KeyError):
                result.get(timeout=10)
        else:
            assert result.get(timeout=10) == x
    assert "12/12 done · SUCCESS 4 · FAILURE 8" in display.text()


def test_each_item_sends_prerun_postrun_and_success_and_a_raising_receiver_stops_nothing(cluster, tasks):
    import logging

    heard: dict[str, list[str]] = {"prerun": [], "postrun": [], "success": [], "failure": []}
    lock = threading.Lock()
    logged: list[str] = []
    log_handler = logging.Handler()
    log_handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("celery.utils.dispatch.signal").addHandler(log_handler)  # where Signal.send logs it

    def receiver(kind):
        def on(sender=None, task_id=None, **_):
            with lock:
                heard[kind].append(task_id or sender.request.id)
        return on

    def broken(**_):
        raise RuntimeError("a broken receiver")

    handlers = {signals.task_prerun: receiver("prerun"), signals.task_postrun: receiver("postrun"),
                signals.task_success: receiver("success"), signals.task_failure: receiver("failure")}
    signals.task_prerun.connect(broken, sender=tasks.check, weak=False)  # connected first: called first
    for sent, on in handlers.items():
        sent.connect(on, sender=tasks.check, weak=False)
    try:
        group = celerynb.map(tasks.check, range(12), batch=6)
        get_monitor(cluster.app).wait([r.id for r in group.results], timeout=30)
    finally:
        logging.getLogger("celery.utils.dispatch.signal").removeHandler(log_handler)
        signals.task_prerun.disconnect(broken, sender=tasks.check)
        for sent, on in handlers.items():
            sent.disconnect(on, sender=tasks.check)
    ids = [r.id for r in group.results]
    assert sorted(heard["prerun"]) == sorted(heard["postrun"]) == sorted(ids)
    assert sorted(heard["success"]) == sorted(ids[2::3])  # check(x) succeeds for x % 3 == 2
    assert sorted(heard["failure"]) == sorted(set(ids) - set(ids[2::3]))
    assert sum("a broken receiver" in text for text in logged) == 12


def test_progress_counts_items_not_messages(cluster, tasks, received):
    group = celerynb.map(tasks.inc, range(40), batch=10)
    display = celerynb.progress(group, widget=False)
    assert display.wait(timeout=30) == [i + 1 for i in range(40)]
    assert "40/40 done" in display.text() and "SUCCESS 40" in display.text()
    assert received.count(batch_task.NAME) == 4


def test_results_are_the_same_through_a_pipeline_where_scripts_are_refused(cluster, tasks, monkeypatch):
    from celerynb.workers import result_store

    client = cluster.app.backend.client
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("celery-task-meta-*")  # a PUBLISH per result on its own channel...
    listener.subscribe(gathered_channel(cluster.app.backend))  # ...or in a batch's gathered message
    try:
        monitor = get_monitor(cluster.app)
        scripted = celerynb.map(tasks.check, range(9), batch=9)
        monitor.wait([r.id for r in scripted.results], timeout=30)
        monkeypatch.setattr(result_store, "_scripts_refused", True)
        piped = celerynb.map(tasks.check, range(9), batch=9)
        snaps = monitor.wait([r.id for r in scripted.results + piped.results], timeout=30)
        wanted, own, gathered = {r.id for r in scripted.results + piped.results}, set(), set()

        def all_published() -> bool:
            message = listener.get_message(timeout=0.05)
            if message is not None and message["type"] == "pmessage":
                own.add(message["channel"].decode().removeprefix("celery-task-meta-"))
            elif message is not None:
                gathered.update(doc["task_id"] for doc in json.loads(message["data"]))
            return wanted <= own | gathered

        wait_for(all_published, timeout=5, interval=0, message="a PUBLISH for every stored result")
    finally:
        listener.close()
    # The script gathers (the monitor listens on the private server); the pipeline cannot.
    assert gathered == {r.id for r in scripted.results} and own == {r.id for r in piped.results}

    def stored(result):
        doc = json.loads(client.get(cluster.app.backend.get_key_for_task(result.id)))
        assert all(doc.get(field) is not None for field in result_store.TIMING_FIELDS)  # each item's own timing
        skipped = ("task_id", "date_done", "traceback", "worker", *result_store.TIMING_FIELDS)
        return {k: v for k, v in doc.items() if k not in skipped}

    assert [stored(r) for r in scripted.results] == [stored(r) for r in piped.results]
    assert [snaps[r.id].state for r in piped.results] == ["FAILURE", "FAILURE", "SUCCESS"] * 3


def test_result_documents_are_the_text_the_backend_encodes(cluster):
    """A batch's documents are exactly what Celery's ``backend.encode`` makes of them (kombu's
    JSON with its own types and ASCII escapes), and a backend with another serializer gets its own."""
    import datetime
    import decimal
    import uuid

    from celery import Celery, states
    from celery.app.task import Context

    values = [1, "naïve ☃ \"quoted\"", datetime.datetime(2026, 12, 7, 23, 0, tzinfo=datetime.UTC),
              b"\xff\x00", uuid.UUID(int=5), decimal.Decimal("1.5"), {"a": [1, None, 2.5]}]

    def documents(app, values):
        buffer = ResultBuffer(app, app.backend)
        for i, value in enumerate(values):
            buffer.add(Context({"id": f"doc-{i}", "task": "t", "args": [], "kwargs": {}}), states.SUCCESS, value, None)
        return [document for _, _, document in buffer.pending]

    backend = cluster.app.backend
    docs = documents(cluster.app, values)
    assert [backend.encode(backend.decode(doc)) for doc in docs] == docs
    assert [backend.decode(doc)["result"] for doc in docs] == values
    yaml_app = Celery("yaml-results", broker="memory://", backend=cluster.app.conf.result_backend,
                      result_serializer="yaml", result_accept_content=["yaml"])
    try:
        [doc] = documents(yaml_app, [{"a": [1, "☃"]}])
        assert yaml_app.backend.encode(yaml_app.backend.decode(doc)) == doc
        assert yaml_app.backend.decode(doc)["result"] == {"a": [1, "☃"]}
    finally:
        yaml_app.close()


def test_gathered_results_still_reach_their_own_subscribers_and_large_ones_go_alone(cluster):
    """With a listener on the gathered channel, a group's small documents travel there together;
    a key with a subscriber of its own (a Celery ``.get()``) and a document over ``GATHER_MAX``
    still get their own PUBLISH; with no gathered listener every key gets its own again."""
    from celery import states
    from celery.app.task import Context

    backend, client = cluster.app.backend, cluster.app.backend.client
    prefix = f"gather-{os.getpid()}-{threading.get_ident()}-"
    ids = [prefix + name for name in ("watched", "plain", "large")]
    gathering = client.pubsub(ignore_subscribe_messages=True)
    gathering.subscribe(gathered_channel(backend))
    own = client.pubsub(ignore_subscribe_messages=True)
    own.subscribe(backend.get_key_for_task(ids[0]))  # as Celery's .get() subscribes
    every = client.pubsub(ignore_subscribe_messages=True)
    every.psubscribe(backend.get_key_for_task(prefix).decode() + "*")

    def store(round_: int) -> None:
        buffer = ResultBuffer(cluster.app, backend)
        for tid in ids:
            value = "x" * (GATHER_MAX + 1) if tid.endswith("large") else round_
            buffer.add(Context({"id": tid, "task": "t", "args": [], "kwargs": {}}), states.SUCCESS, value, None)
        buffer.flush()

    def heard(listener, count: int) -> list:
        messages: list = []

        def enough() -> bool:
            message = listener.get_message(timeout=0.05)
            if message is not None:
                messages.append(message)
            return len(messages) >= count

        wait_for(enough, timeout=5, interval=0, message=f"{count} message(s)")
        return messages

    try:
        wait_for(lambda: client.pubsub_numsub(gathered_channel(backend))[0][1] >= 1, timeout=5)
        store(1)
        [together] = heard(gathering, 1)
        assert [(d["task_id"], d["result"]) for d in json.loads(together["data"])] == [(ids[0], 1), (ids[1], 1)]
        assert [json.loads(m["data"])["result"] for m in heard(own, 1)] == [1]
        alone = {m["channel"].decode().rsplit("-", 1)[-1] for m in heard(every, 2)}
        assert alone == {"watched", "large"}  # the plain one was heard only in the gathered message
        gathering.unsubscribe()
        wait_for(lambda: client.pubsub_numsub(gathered_channel(backend))[0][1] == 0, timeout=5)
        store(2)
        assert {m["channel"].decode().rsplit("-", 1)[-1] for m in heard(every, 3)} == {"watched", "plain", "large"}
    finally:
        for listener in (gathering, own, every):
            listener.close()
        client.delete(*[backend.get_key_for_task(tid) for tid in ids])


def test_cancel_stops_the_rest_of_a_batch_in_kernel(cluster, tasks, tmp_path):
    _cancel_mid_batch(tasks, tmp_path)


def _cancel_mid_batch(tasks, markers: Path) -> None:
    keys = ["gate"] + [f"k{i}" for i in range(9)]
    group = celerynb.map(tasks.gated, [(k, str(markers)) for k in keys], batch=10)
    wait_for(lambda: (markers / "gate").exists(), timeout=30, message="the first item to start")
    monitor = get_monitor(group.app)
    wait_for(lambda: monitor.snapshot(group.results[0].id).state == "STARTED", timeout=10,
             message="the running item shown STARTED (celerynb's rule: after 50 ms)")
    cancel_tasks(group.app, [r.id for r in group.results[1:]])
    (markers / "release").touch()
    snaps = monitor.wait([r.id for r in group.results], timeout=30)
    assert [snaps[r.id].state for r in group.results] == ["SUCCESS"] + ["REVOKED"] * 9
    assert not [k for k in keys[1:] if (markers / k).exists()]  # none of them ran
    assert group.results[0].get(timeout=10) == "gate"


def test_retry_inside_a_batch_resends_that_item_alone(cluster, tasks, received):
    group = celerynb.map(tasks.flaky, range(10), batch=5)
    assert group.get(timeout=30) == [[x, 2] for x in range(10)]
    assert received.count(batch_task.NAME) == 2 and received.count(tasks.flaky.name) == 20  # 2 retries each


def test_empty_input_and_a_generator(cluster, tasks, received):
    assert celerynb.map(tasks.inc, [], batch=5).results == []
    assert celerynb.map(tasks.inc, iter([])).results == []
    assert celerynb.map(tasks.inc, (i for i in range(40)), batch=6).get(timeout=30) == [i + 1 for i in range(40)]
    assert received.count(batch_task.NAME) == 7
    received.clear()
    assert celerynb.map(tasks.inc, (i for i in range(200))).get(timeout=30) == [i + 1 for i in range(200)]
    # auto read the generator's length ahead: at most 200 / 16 items per batch, spread over the workers
    assert batch_task.NAME in received and len(received) >= 200 // batched.SPREAD, received


def test_batch_1_is_one_message_per_item(cluster, tasks, received):
    assert celerynb.map(tasks.inc, range(40), batch=1).get(timeout=30) == [i + 1 for i in range(40)]
    assert received.count(tasks.inc.name) == 40 and batch_task.NAME not in received


def test_auto_batches_small_calls(cluster, tasks, received):
    group = celerynb.map(tasks.inc, range(400))
    assert group.get(timeout=30) == [i + 1 for i in range(400)]
    assert batch_task.NAME in received and len(received) <= 400 // 4, len(received)
    received.clear()
    assert celerynb.map(tasks.inc, range(20)).get(timeout=30) == [i + 1 for i in range(20)]  # too few to batch
    assert received == [tasks.inc.name] * 20


def test_auto_does_not_batch_a_slow_task(cluster, tasks, received):
    n = 36
    group = celerynb.map(tasks.slow, range(n))
    assert group.get(timeout=60) == list(range(n))
    # The first items went as one measuring batch; it was not back in time, so the rest went one each.
    assert received.count(batch_task.NAME) == 1 and received.count(tasks.slow.name) == n - batched.PROBE


@pytest.mark.parametrize("value", [0, -1, 2.5, "big", True, None])
def test_bad_batch_values_are_one_line_errors(app, tasks, value):
    with pytest.raises(ValueError, match="batch must be 'auto' or a whole number") as info:
        celerynb.map(tasks.inc, [1], batch=value)
    assert "\n" not in str(info.value)


def test_unserializable_item_names_its_index_and_sends_nothing_of_its_chunk(app, tasks):
    cluster = celerynb.LocalCluster(workers=0).start()  # nothing consumes: read the queue
    try:
        with pytest.raises(ArgumentNotSerializable) as info:
            celerynb.map(tasks.inc, [1, 2, 3, object(), 5], batch=2, chunk=2)
        assert "item #3" in str(info.value) and "'x'" in str(info.value)
        (message,) = _queued(app)  # the first chunk went; the chunk with the bad item did not
        assert message["headers"]["task"] == batch_task.NAME
        name, pairs = _body(message)[0][:2]
        assert name == tasks.inc.name and [args for _, args in pairs] == [[1], [2]]
        # The chunk that went is reported like any map's: the monitor follows it without being asked.
        cluster.add_worker()
        monitor = get_monitor(app)
        wait_for(lambda: [monitor.snapshot(i).info for i, _ in pairs] == [2, 3], timeout=30,
                 message="the sent items seen finished by the monitor")
    finally:
        cluster.stop()


def test_a_failed_chunk_is_not_left_tracked(app, tasks):
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        with pytest.raises(ArgumentNotSerializable, match="item #3"):
            celerynb.map(tasks.inc, [1, 2, 3, object(), 5], batch=2, chunk=4)  # one chunk: none of it sent
        assert _queued(app) == []
        assert get_monitor(app).unfinished == 0  # its first batch was tracked before the failure: untracked
    finally:
        cluster.stop()


def test_states_stored_while_a_map_is_sent_are_heard_not_read(cluster, tasks):
    """Each batch is tracked before it leaves: the monitor does not read, once the map returns, the
    results stored meanwhile (the probe batch, sent before its size is known, is read)."""
    from celerynb.tracking.backend_source import BATCH

    monitor = get_monitor(cluster.app)
    celerynb.map(tasks.inc, range(40)).get(timeout=30)  # the monitor is connected and subscribed
    before = dict(monitor.stats)
    assert celerynb.map(tasks.inc, range(2000)).get(timeout=60) == [i + 1 for i in range(2000)]
    reads, sweeps = (monitor.stats[k] - before[k] for k in ("mget_keys", "reconciles"))
    assert reads <= batched.PROBE + BATCH * sweeps, (reads, sweeps)


    # Nor does a display's first picture (``read_now``) read them: while they are unsent and the
    # monitor live, what they store is pushed; and it still is, once stored.
    ids = [f"unsent-{os.getpid()}-{i}" for i in range(50)]
    before = monitor.stats["mget_keys"]
    monitor.track(ids, unsent=True)
    monitor.read_now(ids)
    assert monitor.stats["mget_keys"] == before
    try:
        for tid in ids:
            cluster.app.backend.store_result(tid, 7, "SUCCESS")
        assert {s.state for s in monitor.wait(ids, timeout=10).values()} == {"SUCCESS"}
    finally:
        cluster.app.backend.client.delete(*[cluster.app.backend.get_key_for_task(tid) for tid in ids])


def test_batch_message_of_a_cell_task_names_its_version(app, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = TerminalInteractiveShell.instance()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        shell.run_line_magic("load_ext", "celerynb")
        shell.run_cell_magic("celery_task", "--name tests.batch_cell", "def cube(x):\n    return x ** 3\n")
        cube = shell.user_ns["cube"]
        group = celerynb.map(cube, range(6), batch=3)
        messages = _queued(app)
        assert [m["headers"]["task"] for m in messages] == [batch_task.NAME] * 2
        assert {m["headers"]["celerynb_cell"] for m in messages} == {cube._celerynb_record["version"]}
        # A new version of the cell: the queued batches still run the version they name.
        shell.run_cell_magic("celery_task", "--name tests.batch_cell", "def cube(x):\n    return -x\n")
        cluster.add_worker()
        assert group.get(timeout=30) == [x ** 3 for x in range(6)]
    finally:
        cluster.stop()
        shell.run_line_magic("unload_ext", "celerynb")
        app.tasks.pop("tests.batch_cell", None)
        TerminalInteractiveShell.clear_instance()


def test_own_app_needs_the_batch_task_for_explicit_batches(app):
    from celery import Celery

    from celerynb.cluster import server
    from celerynb.cluster.inkernel import InProcessWorker, stop_workers

    url = server.shared_server().url
    other = Celery("batch-own", broker=url, backend=url, set_as_current=False)
    other.config_from_object("celerynb.workers.settings")
    other.conf.broker_url = other.conf.result_backend = url
    queue = f"batch-own-{os.getpid()}"

    @other.task(name="batch.own.square", shared=False)
    def square(x):
        return x * x

    with pytest.raises(ValueError, match=r"celerynb\.workers\.batch\.register\(app\)") as info:
        celerynb.map(square, range(5), batch=5)
    assert "\n" not in str(info.value)
    worker = InProcessWorker(other, queues=[queue]).start()
    try:
        auto = celerynb.map(square, range(40), queue=queue)  # auto: one message per item on an own app
        assert auto.get(timeout=30) == [x * x for x in range(40)]
        batch_task.register(other)
        assert celerynb.map(square, range(40), batch=8, queue=queue).get(timeout=30) == [x * x for x in range(40)]
    finally:
        stop_workers([worker])
        get_monitor(other).stop()


# -- worker processes ------------------------------------------------------------------------------
def test_worker_process_runs_batches_and_auto_batches(app, tasks_module):
    tasks, folder = tasks_module
    cluster, proc = _process_cluster(folder, concurrency=2)
    try:
        group = celerynb.map(tasks.check, range(30), batch=7)
        for x, result in enumerate(group.results):
            expected = (tasks.Odd, KeyError, None)[x % 3]
            if expected is None:
                assert result.get(timeout=60) == x
            else:
                with pytest.raises(expected):
                    result.get(timeout=60)
        assert celerynb.map(tasks.inc, range(500)).get(timeout=60) == [i + 1 for i in range(500)]
        stats = app.control.inspect(destination=[proc.name], timeout=5).stats() or {}
        total = stats[proc.name]["total"]
        assert tasks.inc.name not in total and tasks.check.name not in total
        assert 5 + 1 <= total[batch_task.NAME] <= 5 + 500 // 4, total  # 30/7 -> 5 batches, then auto
    finally:
        cluster.stop()


def test_cancel_stops_the_rest_of_a_batch_on_a_worker_process(app, tasks_module, tmp_path):
    tasks, folder = tasks_module
    cluster, _ = _process_cluster(folder)
    try:
        _cancel_mid_batch(tasks, tmp_path)
    finally:
        cluster.stop()


def test_cancel_before_a_batch_starts_revokes_its_items_on_a_worker_process(app, tasks_module):
    tasks, folder = tasks_module
    cluster = celerynb.LocalCluster(workers=0).start()  # nothing consumes yet
    try:
        group = celerynb.map(tasks.inc, range(6), batch=6)
        cancel_tasks(app, [r.id for r in group.results[2:]])
        cluster.add_process(extra_args=["--include", "batchmap_tasks"], env={"PYTHONPATH": str(folder)})
        snaps = get_monitor(app).wait([r.id for r in group.results], timeout=60)
        assert [snaps[r.id].state for r in group.results] == ["SUCCESS"] * 2 + ["REVOKED"] * 4
        assert [snaps[r.id].info for r in group.results[:2]] == [1, 2]
    finally:
        cluster.stop()


def test_cell_task_batches_run_their_version_on_a_worker_process(app, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    shell = TerminalInteractiveShell.instance()
    cluster = celerynb.LocalCluster(workers=0).start()
    try:
        shell.run_line_magic("load_ext", "celerynb")
        shell.run_cell_magic("celery_task", "--name tests.batch_cell_proc", "def cube(x):\n    return x ** 3\n")
        first = celerynb.map(shell.user_ns["cube"], range(8), batch=3)
        shell.run_cell_magic("celery_task", "--name tests.batch_cell_proc", "def cube(x):\n    return -x\n")
        second = celerynb.map(shell.user_ns["cube"], range(8), batch=3)
        cluster.add_process()  # started after both maps: it fetches each batch's version by its header
        assert first.get(timeout=60) == [x ** 3 for x in range(8)]
        assert second.get(timeout=60) == [-x for x in range(8)]
    finally:
        cluster.stop()
        shell.run_line_magic("unload_ext", "celerynb")
        app.tasks.pop("tests.batch_cell_proc", None)
        TerminalInteractiveShell.clear_instance()


def test_killed_worker_fails_the_unfinished_items_of_a_batch_that_is_not_acks_late(app, tasks_module, tmp_path):
    tasks, folder = tasks_module
    cluster, proc = _process_cluster(folder)
    try:
        keys = ["a", "gate", "b", "c"]
        group = celerynb.map(tasks.gated, [(k, str(tmp_path)) for k in keys], batch=4)
        gate = tmp_path / "gate"
        pid = int(wait_for(lambda: gate.exists() and gate.read_text(), timeout=30, message="the gate item to start"))
        assert pid in {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        monitor = get_monitor(app)
        wait_for(lambda: monitor.snapshot(group.results[0].id).state == "SUCCESS", timeout=10,
                 message="the item before the gate stored")
        os.kill(pid, signal.SIGKILL)
        snaps = monitor.wait([r.id for r in group.results], timeout=30)  # none stays PENDING
        assert [snaps[r.id].state for r in group.results] == ["SUCCESS", "FAILURE", "FAILURE", "FAILURE"]
        from billiard.exceptions import WorkerLostError

        with pytest.raises(WorkerLostError):
            group.results[2].get(timeout=10)
        assert not (tmp_path / "b").exists()
    finally:
        cluster.stop()


def test_killed_worker_redelivers_the_batch_without_duplicate_results(app, tasks_module, tmp_path):
    tasks, folder = tasks_module
    cluster, proc = _process_cluster(folder)
    try:
        keys = ["a", "b", "victim", "c", "d"]
        group = celerynb.map(tasks.crashy, [(k, str(tmp_path)) for k in keys], batch=5)
        display = celerynb.progress(group, widget=False)
        victim = tmp_path / "victim"
        pid = int(wait_for(lambda: victim.exists() and victim.read_text().split(), timeout=30,
                           message="the victim item to start")[0])
        assert pid in {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        monitor = get_monitor(app)
        wait_for(lambda: [monitor.snapshot(r.id).state for r in group.results[:2]] == ["SUCCESS"] * 2,
                 timeout=10, message="the items before the victim stored")
        os.kill(pid, signal.SIGKILL)  # the prefork child running the batch, mid-item
        values = display.wait(timeout=90)
        assert [v["key"] for v in values] == keys
        runs = {k: len((tmp_path / k).read_text().split()) for k in keys}
        assert runs == {"a": 1, "b": 1, "victim": 2, "c": 1, "d": 1}  # a and b were not run again
        assert [v["attempts"] for v in values] == [1, 1, 2, 1, 1]
        assert "5/5 done" in display.text() and "redelivered 1" in display.text()  # the victim's second run
    finally:
        cluster.stop()
