"""Live displays at scale, in a real Jupyter kernel: what they cost the run and the kernel.

Each run starts a fresh ``ipykernel`` through ``jupyter_client`` (widgets on:
``CELERYNB_NONINTERACTIVE=0``, ``CI`` unset; this process is the frontend and simply consumes
every iopub message, comm messages of the widgets included), ``%load_ext celerynb``, the default
in-kernel cluster (``celerynb.LocalCluster()``: one worker thread, concurrency 4), a
``%%celery_task`` ``plus_one``, a warm-up, then **20,000** calls (``--quick``: 5,000) submitted
with ``celerynb.map`` in one cell that returns at once. Runs WITH displays (a kernel-wide
``celerynb.TaskTable()`` displayed, then one aggregate ``celerynb.progress(result)``) and
WITHOUT alternate (full: without, with, with, without; quick: one of each); medians.

End to end = the ``map`` call to the last task's result stored (Celery's ``task_success``
signal, which follows the store, counted in the kernel: the same cheap counter in both runs).
While a run is in flight this process sends a trivial cell (``1+1``) every ~0.5 s.

Figures (``<N>`` = ``20k``, or ``5k`` with ``--quick``):

- ``displays_throughput_ratio_<N>``: throughput WITH displays / WITHOUT. Target >= 0.9.
- ``displays_per_s_<N>`` / ``nodisplays_per_s_<N>``: the two throughputs, calls/s.
- ``displays_lag_max_tasks``: the most tasks the aggregate bar's done count (its value, sampled
  in the kernel every 0.2 s) was behind the finished count. Lower is better; one redraw
  interval of the run's throughput is the floor. ``displays_lag_max_s``: the same in seconds
  of that run's throughput (comparable when the throughput changes). A batched ``map`` may
  signal an item's success shortly before its result is stored (a flusher stores within ms):
  the lag then includes that.
- ``displays_final_lag_ms``: last task stored -> the progress display finished (final summary).
- ``kernel_cell_latency_ms_p50`` / ``kernel_cell_latency_ms_max``: execute_request ->
  execute_reply of the trivial cell while the WITH run is in flight. Target <= 200 ms;
  ``..._nodisplays`` twins: the same during the WITHOUT run.
- ``displays_iopub_messages_per_task``: iopub messages (widget comm updates, display data)
  the WITH run sent per task; ``displays_widget_comms_opened``: widget comms it opened (0 would
  mean the text twin was measured, not widgets).
- ``monitor_mget_keys_per_task``: ``get_monitor().stats["mget_keys"]`` added during the WITH run
  / N (keys read by the monitor's reconcile sweeps; was 23: 466,599 keys for 20,000 tasks);
  ``monitor_mget_keys_per_task_nodisplays`` the same WITHOUT displays;
  ``monitor_messages``: ``stats["messages"]`` (state messages pushed to the monitor) during the
  WITH run, and ``monitor_messages_nodisplays``.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_SETUP = r'''
import threading, time
from celery import signals
import celerynb
from celerynb.tracking.monitor import get_monitor
%load_ext celerynb
celerynb.LocalCluster().start()  # what %load_ext celerynb starts on the first task
_bench = {"done": 0, "failed": 0, "n": -1, "t_end": None, "lag_max": 0, "t_shown": None}
_bench_lock = threading.Lock()

def _bench_success(**_):
    with _bench_lock:
        _bench["done"] += 1
        if _bench["done"] == _bench["n"]:
            _bench["t_end"] = time.perf_counter()

def _bench_failure(**_):
    with _bench_lock:
        _bench["failed"] += 1

signals.task_success.connect(_bench_success, weak=False)
signals.task_failure.connect(_bench_failure, weak=False)
'''

_TASK = "%%celery_task\ndef plus_one(x):\n    return x + 1\n"

_WARM = "celerynb.map(plus_one, range(500)).get(timeout=120); import celerynb.display.progress, celerynb.display.table"

_RUN = r'''
_bench.update(done=0, failed=0, n={n}, t_end=None, lag_max=0, t_shown=None)
_stats0 = dict(getattr(get_monitor(), "stats", None) or dict())
if {with_displays}:
    _table = celerynb.TaskTable()
    display(_table)
_t0 = time.perf_counter()
_r = celerynb.map(plus_one, range({n}))
_p = celerynb.progress(_r) if {with_displays} else None

def _bench_sample(n={n}, deadline=time.monotonic() + {timeout}):
    bar = getattr(_p, "group_bar", None)
    while time.monotonic() < deadline:
        done = _bench["done"]
        if bar is not None:
            shown = round(bar.value / 100 * n)
            _bench["lag_max"] = max(_bench["lag_max"], done - shown)
        finished = _p is None or getattr(_p, "finished", True)
        if finished and _bench["t_shown"] is None and _bench["t_end"] is not None:
            _bench["t_shown"] = time.perf_counter()
        if _bench["t_end"] is not None and finished:
            return
        time.sleep(0.2)

threading.Thread(target=_bench_sample, daemon=True).start()
'''

_READY = "_bench['t_end'] is not None and (_p is None or _bench['t_shown'] is not None)"

_RESULT = r'''
import json as _json
_stats1 = getattr(get_monitor(), "stats", {})
_out = {"seconds": _bench["t_end"] - _t0, "failed": _bench["failed"], "lag_max": _bench["lag_max"],
        "final_lag_ms": ((_bench["t_shown"] or _bench["t_end"]) - _bench["t_end"]) * 1e3,
        "mget_keys": _stats1.get("mget_keys", 0) - _stats0.get("mget_keys", 0),
        "messages": _stats1.get("messages", 0) - _stats0.get("messages", 0)}
if _p is not None:
    _table.close()
print("@@" + _json.dumps(_out))
'''


class _Kernel:
    """A fresh kernel with widgets on; every iopub message is consumed (and counted) by a thread."""

    def __init__(self) -> None:
        from jupyter_client.manager import KernelManager

        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env["CELERYNB_NONINTERACTIVE"] = "0"
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(HERE.parent))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.pid = self.km.provisioner.process.pid
        self.iopub_count = 0
        self.comm_opens = 0
        self.stdout: dict[str, str] = {}
        self.errors: dict[str, dict] = {}
        self._closed = threading.Event()
        self._drain = threading.Thread(target=self._consume, daemon=True)
        self._drain.start()

    def _consume(self) -> None:
        while not self._closed.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - channels closed at shutdown
                return
            self.iopub_count += 1
            if msg["msg_type"] == "comm_open":
                self.comm_opens += 1
            parent = msg["parent_header"].get("msg_id", "")
            if msg["msg_type"] == "stream":
                self.stdout[parent] = self.stdout.get(parent, "") + msg["content"]["text"]
            elif msg["msg_type"] == "error":
                self.errors[parent] = msg["content"]

    def execute(self, code: str, timeout: float = 120, **options) -> tuple[dict, float]:
        """Run a cell; its execute_reply and the seconds from request to reply."""
        start = time.perf_counter()
        msg_id = self.kc.execute(code, **options)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        elapsed = time.perf_counter() - start
        if reply["content"]["status"] != "ok":
            time.sleep(0.3)  # the error's iopub message may still be on its way
            error = self.errors.get(msg_id) or reply["content"]
            raise RuntimeError(f"cell failed: {code[:60]!r}: {error.get('ename')}: {error.get('evalue')}")
        return reply, elapsed

    def output(self, code: str, timeout: float = 120) -> str:
        reply, _ = self.execute(code, timeout)
        msg_id = reply["parent_header"]["msg_id"]
        deadline = time.monotonic() + 10
        while "@@" not in self.stdout.get(msg_id, "") and time.monotonic() < deadline:
            time.sleep(0.05)  # the stream message travels on iopub, maybe after the reply
        return self.stdout.get(msg_id, "")

    def shutdown(self) -> None:
        """Polite shutdown, then anything of the kernel's still alive killed by PID."""
        import psutil

        try:
            left = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            left = []
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=False)
        finally:
            self._closed.set()
            for proc in left:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass


def _one_run(n: int, with_displays: bool) -> dict[str, float]:
    timeout = 900.0
    kernel = _Kernel()
    try:
        kernel.execute(_SETUP)
        kernel.execute(_TASK)
        kernel.execute(_WARM)
        time.sleep(1.0)
        iopub_before, comms_before = kernel.iopub_count, kernel.comm_opens
        kernel.execute(_RUN.format(n=n, with_displays=with_displays, timeout=timeout))
        latencies = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply, elapsed = kernel.execute("1+1", user_expressions={"ready": _READY})
            latencies.append(elapsed * 1e3)
            if reply["content"]["user_expressions"]["ready"]["data"]["text/plain"] == "True":
                break
            time.sleep(max(0.0, 0.5 - elapsed))
        else:
            raise TimeoutError(f"{n} tasks not done within {timeout:.0f} s")
        text = kernel.output(_RESULT)
        out = json.loads(text.split("@@", 1)[1])
        if out["failed"]:
            raise RuntimeError(f"{out['failed']} task(s) failed")
        return {"per_s": n / out["seconds"], "lag_max": out["lag_max"], "final_lag_ms": out["final_lag_ms"],
                "latency_p50": statistics.median(latencies), "latency_max": max(latencies),
                "iopub_per_task": (kernel.iopub_count - iopub_before) / n,
                "comm_opens": kernel.comm_opens - comms_before,
                "mget_keys_per_task": out["mget_keys"] / n, "messages": out["messages"]}
    finally:
        kernel.shutdown()


def run(quick: bool = False) -> dict[str, float]:
    n = 5000 if quick else 20_000
    label = f"{n // 1000}k"
    order = [False, True] if quick else [False, True, True, False]
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for with_displays in order:
        print(f"bench_displays: {n} tasks {'with' if with_displays else 'without'} displays",
              file=sys.stderr, flush=True)
        runs[with_displays].append(_one_run(n, with_displays))

    def med(with_displays: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs[with_displays])

    figures = {
        f"displays_throughput_ratio_{label}": med(True, "per_s") / med(False, "per_s"),
        f"displays_per_s_{label}": med(True, "per_s"),
        f"nodisplays_per_s_{label}": med(False, "per_s"),
        "displays_lag_max_tasks": max(r["lag_max"] for r in runs[True]),
        "displays_lag_max_s": max(r["lag_max"] / r["per_s"] for r in runs[True]),
        "displays_final_lag_ms": med(True, "final_lag_ms"),
        "kernel_cell_latency_ms_p50": med(True, "latency_p50"),
        "kernel_cell_latency_ms_max": max(r["latency_max"] for r in runs[True]),
        "kernel_cell_latency_ms_p50_nodisplays": med(False, "latency_p50"),
        "kernel_cell_latency_ms_max_nodisplays": max(r["latency_max"] for r in runs[False]),
        "displays_iopub_messages_per_task": med(True, "iopub_per_task"),
        "displays_widget_comms_opened": med(True, "comm_opens"),
        "monitor_mget_keys_per_task": med(True, "mget_keys_per_task"),
        "monitor_mget_keys_per_task_nodisplays": med(False, "mget_keys_per_task"),
        "monitor_messages": med(True, "messages"),
        "monitor_messages_nodisplays": med(False, "messages"),
    }
    return {k: round(float(v), 3) for k, v in figures.items()}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
