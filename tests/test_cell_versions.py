"""A cell task runs the exact signed version its message names, wherever it lands, or is refused.

Two real kernels share one ``celerynb up`` cluster, each with its in-kernel workers (the
default of ``%celery connect auto``) and a cell task of the same name but another body: every
result is counted by the body that computed it.
"""

from __future__ import annotations

import json
import threading

import pytest

from _kernel import Kernel

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CALLS = 300

WHO = "%%celery_task\ndef who(i):\n    import os\n    return [{letter!r}, os.getpid()]\n"
ONLY_A = "%%celery_task\ndef only_a(i):\n    import os\n    return ['A', os.getpid()]\n"
# Each kernel maps CALLS calls at once and prints, as JSON, who computed them and where.
MAP = (
    "import json, os, collections, celerynb\n"
    "_out = celerynb.map({task}, range({n})).get(timeout=240)\n"
    "print(json.dumps({{'pid': os.getpid(), 'bodies': collections.Counter(b for b, _ in _out),"
    " 'where': collections.Counter(str(p) for _, p in _out)}}))\n"
)


def _connected_kernel() -> Kernel:
    kernel = Kernel()
    for line in ("%load_ext celerynb", "%celery connect auto"):
        reply = kernel.run(line, timeout=120)
        assert reply.status == "ok", reply
    return kernel


@pytest.fixture
def two_kernels(discovery_cluster):
    kernels: list[Kernel] = []
    try:
        kernels.append(_connected_kernel())
        kernels.append(_connected_kernel())
        yield kernels
    finally:
        for kernel in kernels:
            if kernel.km.is_alive():
                kernel.shutdown()


def _run_together(kernels: list[Kernel], codes: list[str], timeout: float = 300) -> list:
    """Run one cell in each kernel at the same time; returns their replies in order."""
    replies: list = [None] * len(kernels)

    def run(i: int) -> None:
        replies[i] = kernels[i].run(codes[i], timeout=timeout)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(kernels))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 10)
    return replies


def _counts(reply) -> dict:
    assert reply is not None and reply.status == "ok", reply
    return json.loads(reply.stdout.strip().splitlines()[-1])


def test_two_kernels_never_run_each_others_body(two_kernels):
    a, b = two_kernels
    assert a.run(WHO.format(letter="A")).status == "ok"
    assert b.run(WHO.format(letter="B")).status == "ok"
    assert a.run(ONLY_A).status == "ok"
    got_a, got_b = (_counts(r) for r in _run_together(
        two_kernels, [MAP.format(task="who", n=CALLS), MAP.format(task="who", n=CALLS)]))
    crossed = got_a["where"].get(str(got_b["pid"]), 0), got_b["where"].get(str(got_a["pid"]), 0)
    print(f"\nA's calls by body: {got_a['bodies']}, B's calls by body: {got_b['bodies']}; "
          f"A's calls that B's kernel ran: {crossed[0]}, B's calls that A's kernel ran: {crossed[1]}")
    assert got_a["bodies"] == {"A": CALLS}, f"{got_a['bodies'].get('B', 0)} of A's calls ran B's body"
    assert got_b["bodies"] == {"B": CALLS}, f"{got_b['bodies'].get('A', 0)} of B's calls ran A's body"
    # A cell defined only in A runs A's body wherever it lands (B's in-kernel workers included).
    only = _counts(a.run(MAP.format(task="only_a", n=60), timeout=300))
    print(f"only_a by body: {only['bodies']}, of which B's kernel ran {only['where'].get(str(got_b['pid']), 0)}")
    assert only["bodies"] == {"A": 60}, only


FLAKY = (
    "%%celery_task --bind {options}\n"
    "def flaky(self, i):\n"
    "    if self.request.retries < 2:\n"
    "        raise self.retry(countdown=0.01)\n"
    "    return [{letter!r}, self.max_retries]\n"
)


def test_bound_cell_retries_as_its_own_version_in_any_kernel(two_kernels):
    """``self`` of a version run in another kernel is that version: its retries re-send it, with its options."""
    a, b = two_kernels
    assert a.run(FLAKY.format(options="", letter="A")).status == "ok"  # Celery's default: 3 retries
    assert b.run(FLAKY.format(options="--max-retries 4", letter="B")).status == "ok"
    code = ("import json, collections, celerynb\n"
            "print(json.dumps(collections.Counter(f'{b}{m}' for b, m in "
            "celerynb.map(flaky, range(60)).get(timeout=120))))\n")
    got_a, got_b = (_counts(r) for r in _run_together(two_kernels, [code, code]))
    assert got_a == {"A3": 60} and got_b == {"B4": 60}, (got_a, got_b)


QUEUED = (
    "import json, os\n"
    "from celerynb.workers import cells\n"
    "_pending = [version.apply_async(countdown=2) for _ in range(5)]\n"
    "version.app.backend.client.delete(cells.record_key(version._celerynb_record['version']))\n"
    "get_ipython().run_cell_magic('celery_task', '', \"def version():\\n    import os\\n"
    "    return ['v2', os.getpid()]\\n\")\n"
    "_now = version.delay().get(timeout=30)\n"
    "print(json.dumps({'queued': [p.get(timeout=30) for p in _pending], 'now': _now, 'pid': os.getpid()}))\n"
)


def test_queued_message_runs_its_version_on_in_kernel_workers():
    """Messages of v1 still queued when the cell is redefined run v1 on the kernel's own workers,
    from memory: even with v1's record gone from the store."""
    kernel = Kernel()
    try:
        assert kernel.run("%load_ext celerynb").status == "ok"
        assert kernel.run("%%celery_task\ndef version():\n    import os\n    return ['v1', os.getpid()]\n").status == "ok"
        got = _counts(kernel.run(QUEUED, timeout=120))
        print(f"\nqueued v1 calls ran: {[body for body, _ in got['queued']]}")
        assert got["now"] == ["v2", got["pid"]]
        assert got["queued"] == [["v1", got["pid"]]] * 5  # v1, and in the kernel itself
    finally:
        kernel.shutdown()
