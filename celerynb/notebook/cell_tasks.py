"""Turn the code of a notebook cell into a Celery task, replacing any earlier version.

Celery keeps the OLD body when a task name is registered again and rejects tasks registered
after a worker started; both are handled here so that re-running a cell just works.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task
from celery.utils.deprecated import CDeprecationWarning

from celerynb.workers import cells


class CellTaskError(ValueError):
    """The cell cannot become a task; the message says why in one sentence."""


@dataclass
class TaskOptions:
    """Options of ``%%celery_task``, mirroring ``@app.task``."""

    name: str | None = None
    bind: bool = False
    queue: str | None = None
    max_retries: int | None = None
    default_retry_delay: float | None = None
    rate_limit: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    acks_late: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_task_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"bind": self.bind}
        for key in ("queue", "max_retries", "default_retry_delay", "rate_limit", "time_limit", "soft_time_limit"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        if self.ignore_result:
            kwargs["ignore_result"] = True
        if self.acks_late:
            kwargs["acks_late"] = True
        kwargs.update(self.extra)
        return kwargs

    def validate(self) -> None:
        for key in ("max_retries", "default_retry_delay", "time_limit", "soft_time_limit"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise CellTaskError(f"--{key.replace('_', '-')} must be >= 0, not {value}.")
        if self.time_limit and self.soft_time_limit and self.soft_time_limit > self.time_limit:
            raise CellTaskError("--soft-time-limit must not exceed --time-limit.")
        if self.queue is not None and not self.queue.strip():
            raise CellTaskError("--queue needs a queue name.")
        if self.rate_limit is not None:
            from celery.utils.time import rate

            try:
                rate(self.rate_limit)
            except (ValueError, TypeError):
                raise CellTaskError(
                    f"--rate-limit {self.rate_limit!r} is not a rate: use e.g. 10/s, 100/m or 1000/h."
                ) from None
        if self.name is not None and (not self.name.strip() or " " in self.name):
            raise CellTaskError(f"--name {self.name!r} is not a task name: use e.g. tasks.my_task.")


def _parse(source: str) -> ast.Module:
    """``ast.parse``, again when CPython 3.11 (seen on 3.11.7) raises "AST constructor recursion depth
    mismatch": its AST state is shared by all threads, and a traceback formatted meanwhile in
    another thread (3.11 parses source lines to place its ``^^^`` marks) upsets the count."""
    for attempt in range(3):
        try:
            return ast.parse(source)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def find_task_function(source: str) -> str:
    """Name of the function in ``source`` that becomes the task.

    It is the one top-level ``def`` that is neither decorated nor used as a decorator in the
    cell (decorated helpers may stay); failing that, the one decorated only by decorators the
    cell defines itself (``def deco`` + ``@deco def work``: ``work``).
    """
    try:
        tree = _parse(source)
    except SyntaxError as exc:
        raise CellTaskError(f"The cell has a syntax error on line {exc.lineno}: {exc.msg}.") from None
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    decorators = {name for node in defs for name in map(_decorator_name, node.decorator_list) if name}
    local = {node.name for node in defs}
    plain = [node for node in defs if not node.decorator_list and node.name not in decorators]
    locally_decorated = [
        node for node in defs if node.decorator_list and node.name not in decorators
        and all(_decorator_name(d) in local for d in node.decorator_list)
    ]
    candidates = plain or locally_decorated
    async_defs = [node.name for node in tree.body if isinstance(node, ast.AsyncFunctionDef)]
    if not candidates and async_defs:
        raise CellTaskError(
            f"{async_defs[0]} is a coroutine function: Celery tasks are plain functions (def, not async def)."
        )
    if not candidates:
        raise CellTaskError("The cell defines no function: write one top-level `def` to become the task.")
    if len(candidates) > 1:
        raise CellTaskError(
            f"The cell defines {len(candidates)} functions ({', '.join(n.name for n in candidates)}): keep one "
            "task per cell, or decorate helpers."
        )
    chosen = candidates[0]
    if not chosen.decorator_list and _is_generator(chosen):
        raise CellTaskError(_generator_message(chosen.name))
    return chosen.name


def _decorator_name(node: ast.expr) -> str | None:
    """``deco`` for ``@deco`` and ``@deco(...)``; None for ``@mod.deco`` and anything else."""
    if isinstance(node, ast.Call):
        node = node.func
    return node.id if isinstance(node, ast.Name) else None


def _is_generator(node: ast.FunctionDef) -> bool:
    """Whether ``yield`` occurs in the function's own body (not in a nested def, lambda or class)."""
    pending: list[ast.AST] = list(node.body)
    while pending:
        child = pending.pop()
        if isinstance(child, ast.Yield | ast.YieldFrom):
            return True
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            pending.extend(ast.iter_child_nodes(child))
    return False


def _generator_message(name: str) -> str:
    return (f"{name} is a generator function (it uses yield): a Celery task returns its result, so "
            "collect the values in a list and return that.")


def check_name(app: Celery, name: str) -> None:
    """Refuse a name that would replace one of Celery's or the app's own tasks in this kernel."""
    if name == "celery" or name.startswith("celery."):
        raise CellTaskError(
            f"task name {name!r} is in Celery's own namespace (celery.*): pass another --name, e.g. notebook.my_task."
        )
    existing = app.tasks.get(name)
    if existing is not None and not hasattr(existing, "_celerynb_record") and not hasattr(existing, "_celerynb_standin"):
        raise CellTaskError(
            f"task name {name!r} is already a task of the app, not defined by a cell: pass another --name."
        )


def register(
    app: Celery, func: Any, options: TaskOptions, source: str, function: str | None = None
) -> Task:
    """Register ``func`` as a task on ``app``, replacing an earlier cell task of the same name.

    ``function`` is the name the cell defines it under (``func.__name__`` by default; a
    decorator may have changed that).
    """
    function = function or func.__name__
    if inspect.isgeneratorfunction(func):
        raise CellTaskError(_generator_message(function))
    if inspect.iscoroutinefunction(func):
        raise CellTaskError(f"{function} is a coroutine function: Celery tasks are plain functions (def, not async def).")
    name = options.name or f"notebook.{function}"
    tasks = app.tasks  # finalizes the app
    check_name(app, name)
    kwargs = task_kwargs(app, options)
    with contextlib.suppress(AttributeError, TypeError):  # a decorator may return a callable object
        func.__module__ = "notebook"
        func.__qualname__ = function
    tasks.pop(name, None)
    with warnings.catch_warnings():
        # Celery 5 warns that the per-task ``queue`` attribute (the guide's style) goes away in 6.
        warnings.simplefilter("ignore", CDeprecationWarning)
        base = type("NotebookCellTask", (cells.VersionCheckedTask, app.Task), {})
        task = app.task(name=name, shared=False, base=base, **kwargs)(func)
    task._celerynb_source = source
    task._celerynb_record = cells.make_record(name, function, source, kwargs)
    cells.remember(task)
    _notify_workers(app, name, options.queue)
    return task


def task_kwargs(app: Celery, options: TaskOptions) -> dict[str, Any]:
    """``@app.task`` keywords of a cell, with a soft time limit that fits its hard one.

    A hard limit alone inherits the app's soft limit (celerynb's: 3300 s), and Celery refuses
    every call whose soft limit exceeds its hard one: below the app's soft limit the cell's
    soft limit is its hard one, in the kernel and (through the record) on every worker.
    """
    kwargs = options.as_task_kwargs()
    hard = kwargs.get("time_limit")
    if hard and kwargs.get("soft_time_limit") is None:
        app_soft = app.conf.task_soft_time_limit
        if app_soft and app_soft > hard:
            kwargs["soft_time_limit"] = hard
    return kwargs


def _notify_workers(app: Celery, name: str, queue: str | None) -> None:
    from celerynb.cluster import local

    running = local.current()
    if running is None or running.app is not app:
        return
    running.forget_task(name)
    if queue:
        running.add_queue(queue)
