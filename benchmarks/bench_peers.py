"""celerynb against its peers: plain Celery, dask.distributed and ipyparallel, same work, 4 slots each.

Five systems, each with **4 execution slots**, each started in its own interpreter once per
repeat block (started, warmed up, measured, stopped by PID), blocks alternating in order
(full: 3 repeats, median; ``--quick``: 1):

- ``inkernel``: ``celerynb.LocalCluster()`` as ``%load_ext celerynb`` starts it (one worker
  thread in the kernel, threads pool, concurrency 4), tasks defined with ``%%celery_task``;
- ``processes``: ``celerynb.LocalCluster(workers=0, processes=4)``, the same cell tasks shipped
  to ``celery worker`` processes (whatever shape ``processes=4`` has today: 4 slots);
- ``celery``: plain Celery as users run it: ``celery -A _peer_tasks worker -c 4 -P prefork``
  on a private embedded Valkey server (password, 127.0.0.1), a plain ``Celery(...)`` app (JSON,
  Redis broker and backend) driven with ``.delay()`` then ``.get()`` on each result;
- ``dask``: ``distributed.LocalCluster(n_workers=2, threads_per_worker=2)``,
  ``client.map(..., pure=False)`` + ``client.gather``; round trip ``client.submit(...).result()``;
- ``ipyparallel``: ``ipp.Cluster(n=4)``, load-balanced ``view.map_async(...).get()``; round trip
  ``view.apply_async(f, x).get()``.

A peer whose package is missing is skipped (figure ``peers_<system>_skipped`` says why);
``pip install -e '.[bench]'`` installs them all.

Workloads, end to end (first submit to last result in hand):

- ``small``: 2,000 calls of ``x + 1``; ``sleep``: 800 calls of ``time.sleep(0.01)`` (ideal on 4
  slots: 400/s); ``map10k``: 10,000 calls of ``x + 1`` (the batched-map target);
- ``rtt``: median of 200 one-at-a-time round trips.

``--quick`` makes a quarter of the calls (500, 200, 2,500; rtt 100) in one block per system:
about 3 minutes on a busy 2-core machine (full: ~20), for a trend only; the figures keep their names.

celerynb submits with ``celerynb.map(task, items)`` (with ``batch=`` only when its signature
accepts one: figure ``peers_map_batch`` says what was passed) and waits either with the
returned ``GroupResult``'s ``.get()`` (``get``) or with ``celerynb.gather`` (``gather``); the
peers with their own idiom above. ``map10k`` on celerynb is also run as a loop of ``.delay()``
then ``.get()`` on each result, on the same cluster (``delay_loop``).

Figures (throughput in calls/s, round trip in ms; ratios are of medians, >= 1 means celerynb is
at least as fast):

- ``peers_<system>_<workload>_per_s`` (celerynb: ``.get()``; ``..._gather_per_s``: with
  ``gather``; ``peers_<shape>_map10k_delay_loop_per_s``), ``peers_<system>_rtt_ms``;
- ``peers_<workload>_<shape>_vs_<peer>`` and ``peers_<workload>_<shape>_gather_vs_<peer>``:
  celerynb throughput / the peer's, for workload ``small``, ``sleep``, ``map10k``, shape
  ``inkernel`` or ``processes``, peer ``celery`` or ``dask``. Targets: >= 1.0 against
  ``celery`` (both shapes); ``map10k`` against ``dask``: >= 5;
- ``peers_rtt_<shape>_vs_<peer>``: the peer's round trip / celerynb's. Target >= 1.0 against
  ``celery``;
- ``peers_map10k_<shape>[_gather]_vs_delay_loop``: map throughput / the ``.delay()`` loop's,
  same cluster. Target >= 20;
- ``peers_map10k_vs_dask`` and ``peers_map10k_vs_delay_loop``: the headline two, in-kernel with
  ``.get()`` (copies of ``peers_map10k_inkernel_vs_dask`` / ``..._vs_delay_loop``);
- ``peers_<workload>_<shape>_get_vs_gather``: ``.get()`` throughput / ``gather``'s. Target:
  >= 1.0 (``map(...).get()`` as fast as ``gather``);
- ``peers_processes_worker_processes``: how many ``celery worker`` processes ``processes=4``
  started (4 today: one prefork child each).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS = ("inkernel", "processes", "celery", "dask", "ipyparallel")
CELERYNB = ("inkernel", "processes")
PEERS = ("celery", "dask")  # the baselines of the ratios
THROUGHPUT = {"small": 2000, "sleep": 800, "map10k": 10_000}
SLOTS = 4
_NEEDS = {"dask": "distributed", "ipyparallel": "ipyparallel"}
_BLOCK_TIMEOUT = 900.0

CELLS = (
    "def plus_one(x):\n    return x + 1\n",
    "def sleep_10ms(x):\n    import time\n    time.sleep(0.01)\n    return x\n",
)


# -- measuring (in the child interpreter of one block) -------------------------------------------
def _sizes(quick: bool) -> dict[str, int]:
    """Calls per workload: ``--quick`` makes a quarter of them (the names keep the full sizes).

    ``CELERYNB_BENCH_PEERS_WORKLOADS`` (comma-separated, e.g. ``rtt``) keeps only those workloads,
    for a focused run; the round trip is always measured."""
    only = {w.strip() for w in os.environ.get("CELERYNB_BENCH_PEERS_WORKLOADS", "").split(",") if w.strip()}
    return {name: n // 4 if quick else n for name, n in THROUGHPUT.items() if not only or name in only}


def _median_rtt(call, n: int) -> float:
    """Median of ``n`` one-at-a-time round trips of ``call(i)``, in ms."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _timed(fn, n: int, check) -> float:
    """Calls per second of ``fn(n)`` (which returns the values), the previous values freed first."""
    gc.collect()
    start = time.perf_counter()
    values = fn(n)
    elapsed = time.perf_counter() - start
    check(values, n)
    del values
    return n / elapsed


def _check_plus_one(values, n: int) -> None:
    assert len(values) == n and values[0] == 1 and values[-1] == n, "every x + 1 back, in order"


def _check_sleep(values, n: int) -> None:
    assert len(values) == n and values[-1] == n - 1, "every sleep back, in order"


def _map_options() -> tuple[dict, str]:
    """``batch=`` for ``celerynb.map`` when its signature has it (``CELERYNB_BENCH_MAP_BATCH``
    overrides the value), and how ``peers_map_batch`` reports it."""
    import celerynb

    params = inspect.signature(celerynb.map).parameters
    if "batch" not in params:
        return {}, "none: celerynb.map has no batch parameter"
    raw = os.environ.get("CELERYNB_BENCH_MAP_BATCH")
    if raw:
        value = int(raw) if raw.isdigit() else raw.lower() not in ("0", "false", "no")
    else:
        default = params["batch"].default
        value = True if default in (None, False, inspect.Parameter.empty) else default
    return {"batch": value}, f"batch={value!r}"


def _celerynb_block(shape: str, quick: bool, rep: int) -> dict:
    from IPython.core.interactiveshell import InteractiveShell

    import celerynb

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "celerynb")
    if shape == "inkernel":
        cluster = celerynb.LocalCluster()  # what %load_ext celerynb starts on the first task
    else:
        cluster = celerynb.LocalCluster(workers=0, processes=SLOTS)
    cluster.start()
    try:
        for cell in CELLS:
            shell.run_cell_magic("celery_task", "", cell)
        plus_one, sleep_10ms = shell.user_ns["plus_one"], shell.user_ns["sleep_10ms"]
        options, batch_note = _map_options()

        def by_get(task):
            return lambda n: celerynb.map(task, range(n), **options).get(timeout=600)

        def by_gather(task):
            return lambda n: asyncio.run(celerynb.gather(celerynb.map(task, range(n), **options), timeout=600))

        def delay_loop(n):
            sent = [plus_one.delay(x) for x in range(n)]
            return [r.get(timeout=600) for r in sent]

        # Warm up: connections, queues, the cell versions loaded by every worker process.
        by_get(plus_one)(200), by_gather(plus_one)(200), by_get(sleep_10ms)(40), delay_loop(50)
        out: dict = {"map_batch": batch_note}
        if shape == "processes":
            out["worker_processes"] = float(len(cluster.processes))
        for workload, n in _sizes(quick).items():
            task, check = (sleep_10ms, _check_sleep) if workload == "sleep" else (plus_one, _check_plus_one)
            ways = [("", by_get(task)), ("_gather", by_gather(task))]  # .get() is the plain name
            if workload == "map10k":
                ways.append(("_delay_loop", delay_loop))
            for way, fn in ways if rep % 2 == 0 else list(reversed(ways)):
                out[f"{workload}{way}_per_s"] = _timed(fn, n, check)
        out["rtt_ms"] = _median_rtt(lambda i: plus_one.delay(i).get(timeout=30), 100 if quick else 200)
        return out
    finally:
        cluster.stop()


def _celery_block(quick: bool, rep: int) -> dict:
    import _peer_tasks
    from _peer_tasks import add_one_task, sleep_task

    app = _peer_tasks.app
    name = f"peers{os.getpid()}@127.0.0.1"
    log = tempfile.NamedTemporaryFile(prefix="celerynb-bench-peers-", suffix=".log", delete=False)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "_peer_tasks", "worker", "-c", str(SLOTS), "-P", "prefork",
         "-n", name, "--loglevel", "WARNING"],
        cwd=HERE, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(name in reply for reply in app.control.ping(destination=[name], timeout=0.5)):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start; log: {log.name}")

        def loop(task):
            def fn(n):
                sent = [task.delay(x) for x in range(n)]
                return [r.get(timeout=600) for r in sent]
            return fn

        loop(add_one_task)(200), loop(sleep_task)(40)
        out = {}
        for workload, n in _sizes(quick).items():
            task, check = (sleep_task, _check_sleep) if workload == "sleep" else (add_one_task, _check_plus_one)
            out[f"{workload}_per_s"] = _timed(loop(task), n, check)
        out["rtt_ms"] = _median_rtt(lambda i: add_one_task.delay(i).get(timeout=30), 100 if quick else 200)
        return out
    finally:
        _stop_process(worker)
        log.close()
        os.unlink(log.name)


def _dask_block(quick: bool, rep: int) -> dict:
    from distributed import Client, LocalCluster

    from _peer_tasks import plus_one, sleep_10ms

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        client = Client(cluster)

        def mapped(fn):
            return lambda n: client.gather(client.map(fn, range(n), pure=False))

        mapped(plus_one)(200), mapped(sleep_10ms)(40)
        out = {}
        for workload, n in _sizes(quick).items():
            fn, check = (sleep_10ms, _check_sleep) if workload == "sleep" else (plus_one, _check_plus_one)
            out[f"{workload}_per_s"] = _timed(mapped(fn), n, check)
        out["rtt_ms"] = _median_rtt(lambda i: client.submit(plus_one, i, pure=False).result(), 100 if quick else 200)
        client.close()
        return out
    finally:
        cluster.close()


def _ipyparallel_block(quick: bool, rep: int) -> dict:
    import ipyparallel as ipp

    from _peer_tasks import plus_one, sleep_10ms

    profile_dir = tempfile.mkdtemp(prefix="celerynb-bench-ipp-")  # not the user's ~/.ipython
    cluster = ipp.Cluster(n=SLOTS, profile_dir=profile_dir, controller_ip="127.0.0.1", log_level=40)
    rc = None
    try:
        cluster.start_cluster_sync()
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(SLOTS, timeout=120)
        view = rc.load_balanced_view()

        def mapped(fn):
            return lambda n: view.map_async(fn, range(n)).get()

        mapped(plus_one)(200), mapped(sleep_10ms)(40)
        out = {}
        for workload, n in _sizes(quick).items():
            fn, check = (sleep_10ms, _check_sleep) if workload == "sleep" else (plus_one, _check_plus_one)
            out[f"{workload}_per_s"] = _timed(mapped(fn), n, check)
        out["rtt_ms"] = _median_rtt(lambda i: view.apply_async(plus_one, i).get(), 100 if quick else 200)
        return out
    finally:
        if rc is not None:
            rc.close()
        cluster.stop_cluster_sync()
        import shutil

        shutil.rmtree(profile_dir, ignore_errors=True)


def _block(system: str, quick: bool, rep: int) -> dict:
    blocks = {"inkernel": lambda: _celerynb_block("inkernel", quick, rep),
              "processes": lambda: _celerynb_block("processes", quick, rep),
              "celery": lambda: _celery_block(quick, rep),
              "dask": lambda: _dask_block(quick, rep),
              "ipyparallel": lambda: _ipyparallel_block(quick, rep)}
    try:
        return blocks[system]()
    finally:
        _kill_descendants()  # anything a system left behind, by PID


# -- processes --------------------------------------------------------------------------------
def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_descendants(pid: int | None = None) -> None:
    import psutil

    left = _descendants(pid or os.getpid())
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)


def _stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """TERM (a warm shutdown), then KILL of it and every descendant, by PID."""
    if proc.poll() is not None:
        return
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    import psutil

    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


# -- the orchestrator ----------------------------------------------------------------------------
def _missing(system: str) -> str | None:
    module = _NEEDS.get(system)
    if module and importlib.util.find_spec(module) is None:
        return f"skipped: {module} not installed (pip install -e '.[bench]')"
    return None


def _run_block(system: str, quick: bool, rep: int) -> dict:
    """One block in a fresh interpreter (in-kernel workers and the clients share process-wide state)."""
    from celerynb.cluster.server import EmbeddedServer

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    srv = None
    if system == "celery":
        srv = EmbeddedServer().start()  # password, 127.0.0.1, own session; stopped by PID below
        env[_URL_ENV_NAME] = srv.url  # in the environment, not on a command line
    cmd = [sys.executable, str(Path(__file__).resolve()), "--system", system, "--rep", str(rep)]
    child = subprocess.Popen(cmd + (["--quick"] if quick else []), env=env, cwd=HERE.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=_BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_descendants(child.pid)
        child.kill()
        child.communicate()
        raise RuntimeError(f"bench_peers: the {system} block timed out after {_BLOCK_TIMEOUT:.0f} s") from None
    finally:
        if child.poll() is None:
            _kill_descendants(child.pid)
            child.kill()
            child.wait()
        if srv is not None:
            srv.stop()
    if child.returncode != 0:
        raise RuntimeError(f"bench_peers: the {system} block failed:\n{stderr[-3000:]}")
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARKER):
            return json.loads(line[len(_MARKER):])
    raise RuntimeError(f"bench_peers: the {system} block printed no figures:\n{stderr[-3000:]}")


_URL_ENV_NAME = "CELERYNB_BENCH_PEERS_URL"  # _peer_tasks.URL_ENV, without importing Celery here
_MARKER = "@@bench-peers-block@@"


def _ratios(med: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for shape in CELERYNB:
        for workload in THROUGHPUT:
            for suffix in ("", "_gather"):
                mine = med.get(f"{shape}_{workload}{suffix}_per_s")
                if mine is None:
                    continue
                for peer in PEERS:
                    theirs = med.get(f"{peer}_{workload}_per_s")
                    if theirs:
                        out[f"peers_{workload}_{shape}{suffix}_vs_{peer}"] = mine / theirs
                loop = med.get(f"{shape}_map10k_delay_loop_per_s")
                if workload == "map10k" and loop:
                    out[f"peers_map10k_{shape}{suffix}_vs_delay_loop"] = mine / loop
            got, gathered = med.get(f"{shape}_{workload}_per_s"), med.get(f"{shape}_{workload}_gather_per_s")
            if got and gathered:
                out[f"peers_{workload}_{shape}_get_vs_gather"] = got / gathered
        rtt = med.get(f"{shape}_rtt_ms")
        for peer in PEERS:
            theirs = med.get(f"{peer}_rtt_ms")
            if rtt and theirs:
                out[f"peers_rtt_{shape}_vs_{peer}"] = theirs / rtt
    for headline in ("dask", "delay_loop"):
        if f"peers_map10k_inkernel_vs_{headline}" in out:
            out[f"peers_map10k_vs_{headline}"] = out[f"peers_map10k_inkernel_vs_{headline}"]
    return out


def run(quick: bool = False) -> dict[str, float]:
    repeats = 1 if quick else 3
    figures: dict = {}
    systems = []
    for system in SYSTEMS:
        why = _missing(system)
        if why:
            figures[f"peers_{system}_skipped"] = why
            print(f"bench_peers: {system} {why}", file=sys.stderr)
        else:
            systems.append(system)
    samples: dict[str, list[float]] = defaultdict(list)
    notes: dict[str, str] = {}
    for rep in range(repeats):
        for system in systems if rep % 2 == 0 else list(reversed(systems)):
            print(f"bench_peers: repeat {rep + 1}/{repeats}: {system}", file=sys.stderr, flush=True)
            for name, value in _run_block(system, quick, rep).items():
                if isinstance(value, str):
                    notes[name] = value
                else:
                    samples[f"{system}_{name}"].append(value)
    med = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in med.items():
        figures[f"peers_{name}"] = round(value, 3)
    if "map_batch" in notes:
        figures["peers_map_batch"] = notes["map_batch"]
    figures.update({name: round(value, 3) for name, value in _ratios(med).items()})
    return figures


if __name__ == "__main__":
    if "--system" in sys.argv:
        sys.path.insert(0, str(HERE))
        system = sys.argv[sys.argv.index("--system") + 1]
        rep = int(sys.argv[sys.argv.index("--rep") + 1])
        print(_MARKER + json.dumps(_block(system, "--quick" in sys.argv, rep)), flush=True)
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
