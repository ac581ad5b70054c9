"""Make the guide's ``asyncio.run(main())`` work in a notebook.

A kernel runs cells inside its own event loop, so ``asyncio.run`` refuses to start ("cannot be
called from a running event loop"). nest-asyncio makes the loop re-entrant. It patches asyncio
process-wide, so it is applied only on request (``%load_ext celerynb`` calls
:func:`enable_nested_asyncio`): never when the library is imported, and never in a Celery
worker, where a patched asyncio would change how other people's code runs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging

from celerynb import config

logger = logging.getLogger("celerynb")

# ipykernel 7 ships nest_asyncio2 (the maintained fork, needed on Python 3.12+) and warns when
# asyncio was patched by the old nest_asyncio first; prefer it, fall back to nest_asyncio.
_IMPLEMENTATIONS = ("nest_asyncio2", "nest_asyncio")

_applied: str | None = None
# ``asyncio.run`` before and after the patch: ``%unload_ext`` puts the original back (the rest of
# the patch, on the loop class, behaves like the original when nothing is nested).
_original_run = None
_patched_run = None


def enable_nested_asyncio() -> bool:
    """Let ``asyncio.run()`` run inside the already running loop of this (kernel) thread.

    Idempotent. Returns True when nested runs are enabled (now or before), False where it is
    deliberately not applied (inside a ``celery`` command) or no implementation is installed.
    """
    global _applied, _original_run, _patched_run
    if _applied:
        if _patched_run is not None:
            asyncio.run = _patched_run
        return True
    if config.in_celery_command() or _in_worker_process():
        return False
    for name in _IMPLEMENTATIONS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        _original_run = asyncio.run
        module.apply(_current_loop())
        _patched_run = asyncio.run
        _applied = name
        logger.debug("asyncio made re-entrant with %s", name)
        return True
    logger.warning("asyncio.run() will not work in this kernel: install nest-asyncio2 (pip install nest-asyncio2).")
    return False


def nested_asyncio_enabled() -> bool:
    """True while ``asyncio.run()`` runs nested, as :func:`enable_nested_asyncio` made it."""
    return _applied is not None and asyncio.run is _patched_run


def disable_nested_asyncio() -> None:
    """``asyncio.run`` as it was before :func:`enable_nested_asyncio` (``%unload_ext celerynb``)."""
    if _applied is not None and _original_run is not None and asyncio.run is _patched_run:
        asyncio.run = _original_run


def _current_loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's running loop (cells run inside it); None lets the library pick the thread's loop."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _in_worker_process() -> bool:
    """True in a Celery worker process (prefork child or ``celery worker``): never patch there."""
    try:
        from celery import current_task

        return current_task is not None and bool(getattr(current_task, "request", None) and current_task.request.id)
    except Exception:  # noqa: BLE001 - no celery, or no task: not a worker
        return False
