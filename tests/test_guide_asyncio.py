"""The guide's "Integration with AsyncIO" and "Integration with Redis Messaging" code, run as written.

The code is read from the guide itself; only ``utils.`` becomes ``celerynb.`` (and the bridge,
which uses ``asyncio`` without importing it, gets the import a user would add).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import pytest

# The guide the tutorials follow, kept in the repo (tests/test_notebooks_meta.py reads it too).
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


def guide_block(section: str) -> str:
    """The first ```python block after the heading ``section``, with celerynb imports."""
    text = GUIDE.read_text()  # part of the repo: missing is a failure, not a skip
    start = text.index(f"## {section}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block under {section!r}"
    return match.group(1).replace("from utils.", "from celerynb.")


def test_guide_asyncio_example_runs_as_written(cluster, capsys):
    code = guide_block("Integration with AsyncIO")
    assert "asyncio.run(main())" in code and "TaskManager()" in code
    namespace: dict = {"__name__": "guide_asyncio"}
    exec(compile(code, "guide-asyncio", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.startswith("All documents processed: [")
    assert all(f"'document_id': '{d}'" in out for d in ("doc1", "doc2", "doc3"))


def test_guide_bridge_runs_as_written(cluster, app):
    code = "import asyncio\n" + guide_block("Integration with Redis Messaging")
    namespace: dict = {"__name__": "guide_bridge"}
    exec(compile(code, "guide-bridge", "exec"), namespace)
    bridge_fn = namespace["redis_celery_bridge"]

    from celerynb.messaging.redis import AsyncRedisClient, RedisPubSub

    async def main():
        acks, results = [], []
        async with AsyncRedisClient(app.conf.broker_url) as client:
            listener = RedisPubSub(client=client)
            await listener.subscribe("processing:ack", lambda c, m: acks.append(json.loads(m)))
            await listener.subscribe("processing:results", lambda c, m: results.append(json.loads(m)))
            bridge = asyncio.create_task(bridge_fn())
            deadline = time.monotonic() + 30
            while (await client.pubsub_numsub("processing:requests"))[0][1] < 1:
                assert time.monotonic() < deadline, "the guide's bridge never subscribed"
                await asyncio.sleep(0.02)
            await client.publish("processing:requests", json.dumps({"document_id": "doc1", "options": {"format": "text"}}))
            await client.publish("processing:requests", json.dumps({"document_id": "doc2"}))
            while len(results) < 2:  # the guide's handler polls task.ready() every second
                assert time.monotonic() < deadline + 30, f"results: {results}"
                await asyncio.sleep(0.05)
            bridge.cancel()
            with pytest.raises(asyncio.CancelledError):
                await bridge
            # Its finally block ran: unsubscribed, disconnected.
            assert (await client.pubsub_numsub("processing:requests"))[0][1] == 0
            await listener.unsubscribe_all()
        return acks, results

    acks, results = asyncio.run(asyncio.wait_for(main(), 120))
    assert sorted(a["document_id"] for a in acks) == ["doc1", "doc2"]
    assert {r["document_id"]: r["status"] for r in results} == {"doc1": "completed", "doc2": "completed"}
    by_doc = {r["document_id"]: r for r in results}
    assert by_doc["doc1"]["result"]["format"] == "text"
    assert {a["task_id"] for a in acks} == {r["task_id"] for r in results}


def test_nested_asyncio_is_never_applied_in_a_celery_command(monkeypatch):
    import celery.bin.celery  # noqa: F401 - loaded in every real celery command

    from celerynb.notebook import nested_asyncio as _asyncio_support

    monkeypatch.setattr(sys, "argv", ["celery", "-A", "celerynb.workers.celery_app", "worker"])
    monkeypatch.setattr(_asyncio_support, "_applied", None)
    assert _asyncio_support.enable_nested_asyncio() is False
    assert not _asyncio_support.nested_asyncio_enabled()


ENABLE = {
    "direct": "from celerynb.notebook.nested_asyncio import enable_nested_asyncio\n"
              "print(enable_nested_asyncio(), enable_nested_asyncio())",
    "load_ext": "%load_ext celerynb\n%load_ext celerynb\n"
                "from celerynb.notebook.nested_asyncio import nested_asyncio_enabled\nprint(nested_asyncio_enabled())",
}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["direct", "load_ext"])
def test_guide_asyncio_run_works_in_a_real_kernel(session_dir, how):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    guide = guide_block("Integration with AsyncIO").replace(
        'print(f"All documents processed: {result}")',
        'print(f"All documents processed: {[r[\'document_id\'] for r in result]}")',
    )
    cells = [
        # Importing the library must not patch asyncio.
        "import asyncio\nimport celerynb, celerynb.async_tasks, celerynb.messaging.redis, celerynb.messaging.bridge\n"
        "try:\n    asyncio.run(asyncio.sleep(0))\nexcept RuntimeError as exc:\n    print('refused:', exc)",
        ENABLE[how],
        guide,
        "print(asyncio.run(asyncio.sleep(0, 'again')))",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(session_dir)}})
    client.execute()
    errors = [o for cell in nb.cells for o in cell.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    stdout = ["".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout") for cell in nb.cells]
    assert stdout[0].startswith("refused: asyncio.run() cannot be called from a running event loop")
    assert stdout[1].strip().splitlines()[-1] == ("True True" if how == "direct" else "True")
    assert stdout[2].strip() == "All documents processed: ['doc1', 'doc2', 'doc3']"
    assert stdout[3].strip() == "again"
