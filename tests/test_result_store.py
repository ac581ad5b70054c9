"""Task states stored in one atomic round trip (``celerynb/workers/result_store.py``), on the
embedded server: Celery's rule (a SUCCESS is never overwritten) holds without its GET, and
without the window in which a retry's late RETRY landed on its rerun's SUCCESS.
"""

from __future__ import annotations

import json
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from celery import Celery

from celerynb.workers import result_store


def _published_on(client, key: str, action) -> list[bytes]:
    """What was PUBLISHed on ``key``'s channel while ``action()`` ran (a marker of ours ends it)."""
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    action()
    marker = f"end-{uuid.uuid4()}".encode()
    client.publish(key, marker)
    seen = []
    while (message := pubsub.get_message(timeout=5)) is not None and message["data"] != marker:
        seen.append(message["data"])
    pubsub.close()
    assert message is not None, "the marker never came back"
    return seen


def test_a_late_retry_leaves_a_success_alone_and_publishes_nothing(cluster):
    backend = cluster.app.backend
    done, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    backend.store_result(done, "finished elsewhere", "SUCCESS")
    late = _published_on(backend.client, backend.get_key_for_task(done),
                         lambda: backend.store_result(done, RuntimeError("again"), "RETRY"))
    assert late == []
    assert cluster.app.AsyncResult(done).get(timeout=5) == "finished elsewhere"
    backend.store_result(fresh, RuntimeError("again"), "RETRY")
    assert cluster.app.AsyncResult(fresh).state == "RETRY"
    backend.store_result(fresh, 42, "SUCCESS")
    assert cluster.app.AsyncResult(fresh).get(timeout=5) == 42


@pytest.mark.parametrize("stored, overwritten", [
    (json.dumps({"result": 1, "status": "SUCCESS"}, separators=(",", ":")), False),  # another writer's layout
    (json.dumps({"status": "PROGRESS", "result": "x" * 10_000_000}), True),  # big: only its head is read
    (json.dumps({"status": "progress-of-mine", "result": None}), True),
    ("not json at all", True),
])
def test_any_stored_document_is_judged_by_its_status(cluster, stored, overwritten):
    backend = cluster.app.backend
    task_id = str(uuid.uuid4())
    key = backend.get_key_for_task(task_id)
    backend.client.set(key, stored)
    backend.store_result(task_id, "mine", "SUCCESS")
    now = backend.client.get(key).decode()
    assert (now != stored) is overwritten
    if overwritten:
        assert json.loads(now)["result"] == "mine" and json.loads(now)["task_id"] == task_id


def test_a_state_is_one_command_from_the_client(cluster):
    """Celery sends a GET, then MULTI SETEX PUBLISH EXEC; one EVALSHA does both here."""
    backend = cluster.app.backend
    task_id = str(uuid.uuid4())
    key = backend.get_key_for_task(task_id).decode()
    backend.store_result(task_id, {"pid": 1}, "STARTED")  # the script is cached on the server after this
    commands: list[str] = []
    with backend.client.monitor() as monitor:
        ready = threading.Event()

        def watch() -> None:
            ready.set()
            for event in monitor.listen():
                if event["client_type"] != "lua" and key in event["command"]:
                    commands.append(event["command"].split()[0].upper())
                if "end-of-test" in event["command"]:
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        ready.wait(5)
        backend.store_result(task_id, 1, "SUCCESS")
        backend.store_result(task_id, "late", "RETRY")
        backend.client.get("end-of-test")
        watcher.join(10)
    assert commands == ["EVALSHA", "EVALSHA"]
    assert cluster.app.AsyncResult(task_id).get(timeout=5) == 1


def _user_url(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def test_a_server_refusing_scripts_gets_celerys_own_store(cluster, monkeypatch):
    monkeypatch.setattr(result_store, "_scripts_refused", False)  # put back after the test
    admin = cluster.app.backend.client
    user, password = f"noscript-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-@scripting")
    plain = Celery("noscript", backend=_user_url(cluster.app.conf.result_backend, user, password))
    try:
        task_id = str(uuid.uuid4())
        plain.backend.store_result(task_id, {"kept": True}, "SUCCESS")
        assert not result_store.scripts_allowed()
        plain.backend.store_result(task_id, "late", "RETRY")  # Celery's GET-then-SET still refuses it
        assert plain.AsyncResult(task_id).get(timeout=5) == {"kept": True}
    finally:
        plain.close()
        admin.execute_command("ACL", "DELUSER", user)


def test_a_pickle_backend_keeps_celerys_own_store(cluster):
    """The script reads JSON only: a pickled SUCCESS is protected by Celery's own GET-then-SET."""
    app = Celery("pickled", backend=cluster.app.conf.result_backend)
    app.conf.update(result_serializer="pickle", result_accept_content=["pickle"])
    try:
        task_id = str(uuid.uuid4())
        app.backend.store_result(task_id, {1, 2, 3}, "SUCCESS")
        app.backend.store_result(task_id, "late", "RETRY")
        assert app.AsyncResult(task_id).get(timeout=5) == {1, 2, 3}
    finally:
        app.close()
