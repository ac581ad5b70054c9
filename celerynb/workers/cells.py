"""Notebook cells shipped to workers: signed, versioned, verified before they compile.

A ``%%celery_task`` cell is stored in the result backend's Redis as a JSON record
(``celerynb:cell:<version>``) signed with HMAC-SHA256 under the cluster's cell key; the
signature covers everything in it, the task name included. Each message names its version in
the ``celerynb_cell`` header, and a worker runs exactly that version or refuses the message:

* a cell registered in this kernel (:class:`VersionCheckedTask`) runs its own body when the
  message names its version (no Redis round trip), an earlier version of this kernel from
  memory, and anything else (another kernel's cell of the same name) as a worker process does;
* a worker process meets an unknown task name with a stand-in (:class:`CellTaskRegistry`).

Either way an unknown version is fetched, its signature verified with the worker's own copy
of the key, its name checked against the message's, and only then compiled. No key, a bad
signature, another name or a missing record: the task fails with the reason, nothing runs.
Messages stay JSON; pickle is never involved.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, Task, bootsteps
from celery.app.registry import TaskRegistry
from celery.exceptions import NotRegistered

from celerynb import _compat
from celerynb.workers import capture, started
from celerynb.workers.cell_records import (  # noqa: F401 - also the names callers use as cells.*
    HEADER,
    KEY_ENV,
    KEY_FILE_ENV,
    RECORD_TTL,
    CellRefused,
    cell_key,
    fetch,
    forget_shipped,
    make_record,
    record_key,
    set_process_key,
    ship,
    verify,
)

logger = logging.getLogger("celerynb.cells")

_OPTION_ATTRS = ("max_retries", "default_retry_delay", "rate_limit", "time_limit", "soft_time_limit",
                 "ignore_result", "acks_late")


class CellImportError(ImportError):
    """A shipped cell imports a module that this worker does not have."""


def ship_again(app: Celery) -> int:
    """Store every cell version defined in this process for ``app`` anew (its server restarted
    and lost them, say); returns how many. Workers waiting for one find it within a second."""
    key = cell_key()
    forget_shipped(str(app.conf.result_backend))
    if not key:
        return 0
    versions = [t._celerynb_record for t in list(_defined_here.values()) if t.app is app]
    for record in versions:
        ship(app, record)
    return len(versions)


# -- the worker side ---------------------------------------------------------------------------
class _Compiled:
    """One verified, compiled version, and the task object that runs it (one per app)."""

    def __init__(self, record: dict[str, Any], func: Any) -> None:
        self.record = record
        self.func = func
        self.options = record.get("options", {})
        self._runners: dict[Celery, Task] = {}

    def runner(self, app: Celery) -> Task:
        """A task of ``app`` for this version alone (never put in the app's registry).

        A bound cell gets it as ``self``: its options are this version's, and ``self.retry()``
        re-sends this very version, whatever is registered under the name now.
        """
        runner = self._runners.get(app)
        if runner is None:
            run = self.func if self.options.get("bind") else staticmethod(self.func)
            runner = self._runners.setdefault(app, _task_with_options(app, self.record, run=run,
                                                                      _celerynb_record=self.record))
        return runner


def _task_with_options(app: Celery, record: dict[str, Any], **attrs: Any) -> Task:
    """A task of ``app`` named as ``record``, with its options (never put in the app's registry)."""
    options = record.get("options", {})
    attrs.update({a: options[a] for a in _OPTION_ATTRS if a in options},
                 name=record["name"], typing=False, __module__="notebook")
    cls: Any = type(record["function"], (app.Task,), attrs)
    cls.bind(app)
    return cls()


_compiled: dict[str, _Compiled] = {}
_compile_lock = threading.Lock()


def load_version(app: Celery, version: str, hostname: str, name: str) -> _Compiled:
    """Fetch, verify and compile one cell version (cached per process); only under its own ``name``."""
    compiled = _compiled.get(version)
    if compiled is None:
        with _compile_lock:
            compiled = _compiled.get(version) or _load(app, version, hostname)
            _compiled[version] = compiled
    if compiled.record["name"] != name:
        logger.error("refused cell version %s under the name %s: it is %s", version, name, compiled.record["name"])
        raise CellRefused(
            f"worker {hostname} refused task {name!r}: its message names cell version {version[:12]}, which "
            f"is the cell {compiled.record['name']!r} (a signed version runs only under its own name)."
        )
    return compiled


def _load(app: Celery, version: str, hostname: str) -> _Compiled:
    key = cell_key()
    if not key:
        raise CellRefused(
            f"worker {hostname} holds no cell key, so it refuses to run notebook cells it did not define: "
            f"start it with {KEY_ENV} (or {KEY_FILE_ENV}) set to the cluster's key, or via `celerynb up`."
        )
    record = fetch(app, version) or _wait_for_record(app, version)
    if record is None:
        raise CellRefused(
            f"cell version {version} is not in the store (it expired, a server restart lost it, or it was sent "
            "to another broker) and no kernel stored it again: run the cell again in its notebook."
        )
    if record["version"] != version or not verify(record, key):
        logger.error("refused cell %s (%s): signature does not verify", record["name"], version)
        raise CellRefused(
            f"worker {hostname} refused cell {record['name']!r}: its signature does not verify "
            "(tampered record, or a different cluster key)."
        )
    namespace: dict[str, Any] = {"__name__": f"notebook_cell_{version[:8]}"}
    started = time.perf_counter()
    try:
        exec(compile(record["source"], f"<notebook cell {record['name']}>", "exec"), namespace)
    except ModuleNotFoundError as exc:
        raise CellImportError(
            f"cell task {record['name']!r} imports {exc.name!r}, which worker {hostname} cannot import: "
            f"install it where that worker runs."
        ) from None
    func = namespace.get(record["function"])
    if not callable(func):
        raise CellRefused(f"cell {record['name']!r} does not define {record['function']!r}.")
    logger.info("loaded cell %s version %s in %.1f ms", record["name"], version[:8],
                (time.perf_counter() - started) * 1e3)
    return _Compiled(record, func)


#: Seconds a worker waits for a missing record (its kernel stores it again on reconnecting
#: after a server restart); a version found missing fails at once for MISSING_FOR seconds more.
RECORD_WAIT, MISSING_FOR = 5.0, 30.0
_missing: dict[str, float] = {}


def _wait_for_record(app: Celery, version: str) -> dict[str, Any] | None:
    if _missing.get(version, 0.0) > time.monotonic():
        return None
    deadline, pause = time.monotonic() + RECORD_WAIT, 0.02
    while time.monotonic() < deadline:
        time.sleep(pause)  # rare: a record lost with its server; the kernel's monitor stores it anew
        record = fetch(app, version)
        if record is not None:
            _missing.pop(version, None)
            return record
        pause = min(pause * 2, 0.5)
    _missing[version] = time.monotonic() + MISSING_FOR
    return None


#: Versions defined in this process (a kernel's earlier definitions), by version: queued
#: messages of an earlier version run it from memory, with no key and no Redis round trip.
_defined_here: dict[str, Task] = {}


def remember(task: Task) -> None:
    """Record a cell task defined in this process, so its version keeps running after a redefinition."""
    _defined_here[task._celerynb_record["version"]] = task


#: Per version and app: a task carrying a shipped version's options, for the consumer to
#: receive its messages with (no body: the cell is compiled where it runs, in the pool).
_received_as: dict[tuple[str, Celery], Task] = {}


def task_of_version(app: Celery, version: str, name: str) -> Task | None:
    """A task with the options of ``version`` of cell ``name``, for receiving its messages (None
    when that version is not a verified record of ``name``: the stand-in then fails it, saying why)."""
    earlier = _defined_here.get(version)
    if earlier is not None and earlier.name == name and earlier.app is app:
        return earlier
    task = _received_as.get((version, app))
    if task is not None:
        return task
    key = cell_key()
    try:
        record = fetch(app, version) if key else None
    except Exception:  # noqa: BLE001 - the store unreachable: the stand-in reports it when it runs
        logger.debug("cell version %s of %s not fetched at receipt", version, name, exc_info=True)
        return None
    if record is None or record["version"] != version or record["name"] != name or not verify(record, key):
        return None
    return _received_as.setdefault((version, app), _task_with_options(app, record))


def message_version(request: Any) -> str | None:
    """The cell version a message names (None: a message that names none, e.g. ``send_task``)."""
    return getattr(request, HEADER, None) or (request.headers or {}).get(HEADER)


def run_version(task: Task, version: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``version`` of the cell named ``task.name`` for the message ``task`` is executing."""
    request = task.request
    earlier = _defined_here.get(version)
    if earlier is not None and earlier.name == task.name and earlier.app is task.app:
        runner = earlier
    else:
        runner = load_version(task.app, version, request.hostname or "this worker", task.name).runner(task.app)
    runner.push_request(**vars(request))  # a bound body reads self.request
    try:
        return runner.run(*args, **kwargs)
    finally:
        runner.pop_request()


class VersionCheckedTask(Task):
    """Base of the cell tasks a kernel registers: never runs its body for another version's message.

    The common case, a message naming this very version, costs one attribute read; the
    others go to :func:`run_version`.
    """

    _celerynb_record: dict[str, Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:  # ``task(...)`` in the notebook: Celery's own call
            return super().__call__(*args, **kwargs)
        version = message_version(request)
        with started.started_later(self), capture.capturing(self, request):
            if version is None or version == self._celerynb_record["version"]:
                return self.run(*args, **kwargs)  # what Celery's tracer calls for a plain task
            return run_version(self, version, args, kwargs)


class _CellTask(Task):
    """Stand-in for a task this worker does not know: runs the shipped cell named in the message."""

    abstract = True
    typing = False  # arguments are checked by the cell's own function
    track_started = False  # written later, as for every celerynb task (see celerynb.workers.started)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        version = message_version(self.request)
        if not version:
            raise NotRegistered(
                f"task {self.name!r} is not registered on worker {self.request.hostname or 'this worker'} "
                "(and is no notebook cell)."
            )
        with started.started_later(self), capture.capturing(self, self.request):
            return run_version(self, version, args, kwargs)


STANDINS_KEPT = 256


class CellTaskRegistry(TaskRegistry):
    """A task registry that answers unknown names with a :class:`_CellTask` stand-in.

    Only ``registry[name]`` is affected (``in``, ``get`` and iteration are unchanged); the
    stand-in refuses to run anything that is not a signed notebook cell.
    """

    app: Celery | None = None
    #: Stand-ins made, at most :data:`STANDINS_KEPT` (oldest dropped): never registered, so the
    #: registry lists what was defined, and names that are no cell cannot make it grow.
    standins: dict[str, Task]

    def __missing__(self, name: str) -> Task:
        app = self.app
        if app is None or not isinstance(name, str) or name.startswith("celery."):
            raise NotRegistered(name)
        standins = self.__dict__.setdefault("standins", {})
        task = standins.get(name)
        if task is None:
            from celery.app.trace import build_tracer

            task_cls = type(name.rsplit(".", 1)[-1], (_CellTask,), {"name": name, "__module__": "notebook",
                                                                  "_celerynb_standin": True})
            task = task_cls()
            task.bind(app)
            task.__trace__ = build_tracer(name, task, app.loader, None, app=app)
            if len(standins) >= STANDINS_KEPT:
                del standins[next(iter(standins))]
            standins[name] = task
        return task


def install(app: Celery) -> None:
    """Give ``app`` the cell-aware registry (before any task is registered)."""
    registry = _compat.task_registry(app)
    if not isinstance(registry, CellTaskRegistry):
        new = CellTaskRegistry(registry)
        _compat.replace_task_registry(app, new)
        registry = new
    registry.app = app


class CellSupportStep(bootsteps.StartStopStep):
    """Adds ``celerynb`` to the worker's ``inspect stats`` reply: does it run shipped cells?

    ``%celery status`` asks through ``stats``, which every Celery worker answers: a command of
    our own would make a project's plain workers log ``KeyError`` on each status, and a second
    round trip would be needed to ask only ours.
    """

    def info(self, consumer: Any) -> dict[str, Any]:
        return {"celerynb": {"accepts_cells": bool(cell_key()), "loaded_versions": len(_compiled)}}


def add_cell_support_step(app: Celery) -> None:
    """Let ``app``'s workers say in ``inspect stats`` whether they run shipped cells."""
    app.steps["consumer"].add(CellSupportStep)
