"""Await task results without a polling loop per task.

``await celerynb.wait(result)`` and ``await celerynb.gather(*results)`` resolve asyncio futures
from the shared monitor's listener (``loop.call_soon_threadsafe``): awaiting a thousand results
costs a few batched Redis commands, where the guide's ``while not task.ready(): await
asyncio.sleep(0.5)`` costs one GET per task every half second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from celery import Celery, states
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult, EagerResult, ResultSet

from celerynb import _compat
from celerynb.tracking.monitor import TaskSnapshot, get_monitor


def keep_running_note(count: int) -> str:
    """What an interrupted wait says: the tasks were not stopped, and how to stop them."""
    tasks = "1 task keeps" if count == 1 else f"{count} tasks keep"
    return f"{tasks} running; cancel them with celerynb.cancel(results) or the Cancel button"


def task_ids_of(results: Iterable[Any]) -> tuple[list[str], Celery | None]:
    """Flatten results, result sets and id strings into task ids (and the app they came from)."""
    ids: list[str] = []
    app: Celery | None = None
    for item in results:
        if isinstance(item, ResultSet):  # GroupResult too
            sub, sub_app = task_ids_of(item.results)
            ids += sub
            app = app or sub_app or item.app
        elif isinstance(item, AsyncResult):
            ids.append(item.id)
            app = app or item.app
        elif isinstance(item, str):
            ids.append(item)
        elif isinstance(item, list | tuple):
            sub, sub_app = task_ids_of(item)
            ids += sub
            app = app or sub_app
        else:
            raise TypeError(
                f"Cannot follow {type(item).__name__}: pass an AsyncResult, a GroupResult/ResultSet, "
                "a list of them, or task id strings."
            )
    return ids, app


def seed_eager(results: Iterable[Any], app: Celery | None) -> None:
    """Eager results never reach a backend the monitor watches: record their outcome directly."""
    monitor = None
    for item in results:
        if isinstance(item, EagerResult):
            monitor = monitor or get_monitor(app or item.app)
            value = _compat.eager_value(item)
            info = value if not item.failed() else _exception_info(value)
            monitor.seed(TaskSnapshot(task_id=item.id, state=item.state, info=info, name=_compat.eager_task_name(item)))
        elif isinstance(item, ResultSet):
            seed_eager(item.results, app)
        elif isinstance(item, list | tuple):
            seed_eager(item, app)


def _exception_info(exc: Any) -> Any:
    if isinstance(exc, BaseException):
        return {"exc_type": type(exc).__name__, "exc_message": [str(a) for a in exc.args],
                "exc_module": type(exc).__module__}
    return exc


def outcome(snapshot: TaskSnapshot, app: Celery) -> tuple[bool, Any]:
    """``(ok, value)``: the return value, or the exception rebuilt as ``AsyncResult.get()`` does."""
    if snapshot.state == states.SUCCESS:
        return True, snapshot.info
    info = snapshot.info
    if isinstance(info, dict) and "exc_type" in info:
        try:
            exc = app.backend.exception_to_python(info)
        except Exception:  # noqa: BLE001 - an exception type this process cannot rebuild
            exc = RuntimeError(f"{info.get('exc_type')}: {info.get('exc_message')}")
        return False, exc
    if snapshot.state == states.REVOKED:
        return False, TaskRevokedError(f"Task {snapshot.task_id} was revoked.")
    return False, RuntimeError(f"Task {snapshot.task_id} ended in state {snapshot.state}: {info!r}")


async def gather(*results: Any, timeout: float | None = None, return_exceptions: bool = False,
                 app: Celery | None = None) -> list[Any]:
    """Wait for every task; return their values in order (like ``asyncio.gather``).

    Args:
        results: ``AsyncResult``, ``GroupResult``/``ResultSet``, lists of them, or task ids.
        timeout: seconds; raises ``asyncio.TimeoutError`` when some task is still unfinished.
        return_exceptions: put a failed task's exception in the list instead of raising it.
        app: the Celery app for plain id strings (celerynb's app by default).

    Raises:
        The first failed task's exception (rebuilt as ``AsyncResult.get()`` does) unless
        ``return_exceptions``.
    """
    ids, found_app = task_ids_of(results)
    app = app or found_app
    monitor = get_monitor(app)
    app = monitor.app
    seed_eager(results, app)
    if not ids:
        return []
    loop = asyncio.get_running_loop()
    futures: dict[str, asyncio.Future] = {}
    for tid in ids:
        futures.setdefault(tid, loop.create_future())

    def resolve(snapshot: TaskSnapshot) -> None:
        fut = futures.get(snapshot.task_id)
        if fut is not None and not fut.done():
            fut.set_result(snapshot)

    def on_change(snapshot: TaskSnapshot) -> None:
        if snapshot.ready:
            loop.call_soon_threadsafe(resolve, snapshot)

    remove = monitor.add_listener(on_change, list(futures))
    try:
        monitor.track(ids)
        for tid in futures:  # already finished before the listener existed
            snap = monitor.snapshot(tid)
            if snap.ready:
                resolve(monitor.full_snapshot(tid) if snap.trimmed else snap)
        try:
            await asyncio.wait_for(asyncio.gather(*futures.values()), timeout)
        except KeyboardInterrupt:
            left = sum(1 for f in futures.values() if not f.done())
            raise KeyboardInterrupt(keep_running_note(left)) from None
        except asyncio.CancelledError:  # how ipykernel 7 interrupts an awaiting cell: still cancelled
            left = sum(1 for f in futures.values() if f.cancelled() or not f.done())
            raise asyncio.CancelledError(keep_running_note(left)) from None
        except TimeoutError:
            left = sum(1 for f in futures.values() if f.cancelled() or not f.done())
            raise TimeoutError(
                f"{left} of {len(futures)} task(s) still unfinished after {timeout} s."
            ) from None
    finally:
        remove()
    values = []
    for tid in ids:
        ok, value = outcome(futures[tid].result(), app)
        if not ok and not return_exceptions:
            raise value
        values.append(value)
    return values


async def wait(result: AsyncResult | str, timeout: float | None = None, *, propagate: bool = True,
               app: Celery | None = None) -> Any:
    """Resolve when the task ends: its return value, or raise its exception (like ``.get()``).

    With ``propagate=False`` the exception is returned instead of raised.
    """
    if isinstance(result, ResultSet):
        raise TypeError("wait() takes one task: use gather(group_result) for a group.")
    (value,) = await gather(result, timeout=timeout, return_exceptions=not propagate, app=app)
    return value


def join(ids: list[str], app: Celery, timeout: float | None = None, propagate: bool = True,
         callback: Any = None) -> list[Any]:
    """``GroupResult.join`` on the shared monitor: woken by pushed states, not Celery's polling.

    Same contract as Celery's: values in order; with ``propagate``, the exception of the first
    task (in order) that did not succeed is raised as soon as it is known.
    """
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    monitor = get_monitor(app)
    try:
        snapshots = monitor.wait(ids, timeout, until_failure=propagate)
    except KeyboardInterrupt:
        left = sum(1 for tid in dict.fromkeys(ids) if not monitor.snapshot(tid).ready)
        raise KeyboardInterrupt(keep_running_note(left)) from None
    except TimeoutError as exc:
        raise CeleryTimeoutError(str(exc)) from None
    values = []
    for tid in ids:
        snap = snapshots.get(tid)
        if snap is None:
            break  # after the failure that ends the wait
        ok, value = outcome(monitor.full_snapshot(tid) if snap.trimmed else snap, app)
        if not ok and propagate:
            raise value
        if callback is not None:
            callback(tid, value)
        values.append(value)
    return values
