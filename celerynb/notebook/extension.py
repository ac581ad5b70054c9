"""``%load_ext celerynb``: register magics and display hooks; start nothing.

Loading twice is harmless; ``%unload_ext`` removes what loading added (a running cluster keeps
running: tasks in flight are not the extension's to kill).
"""

from __future__ import annotations

from typing import Any

_MAGIC_NAMES = {"line": ("celery",), "cell": ("celery_task",)}


def load(ip: Any) -> None:
    from celerynb.notebook.magics import CeleryMagics

    if getattr(ip, "_celerynb_magics", None) is None:
        magics = CeleryMagics(ip)
        ip.register_magics(magics)
        ip._celerynb_magics = magics
    from celerynb.notebook import tracebacks
    from celerynb.notebook.formatters import register_display_formatters
    from celerynb.tracking.submitted import enable_submit_log

    register_display_formatters(ip)
    tracebacks.enable()  # a failed task's .get(): the caller's lines, then the task's
    enable_submit_log()  # TaskTable() then lists every task sent from this kernel
    _follow_cells(ip, True)
    _call_optional("celerynb.notebook.nested_asyncio", "enable_nested_asyncio")


def unload(ip: Any) -> None:
    """Undo :func:`load`: magics, display formatters, the submit log and nested ``asyncio.run``."""
    registry = ip.magics_manager.magics
    for kind, names in _MAGIC_NAMES.items():
        for name in names:
            registry[kind].pop(name, None)
    if hasattr(ip, "_celerynb_magics"):
        del ip._celerynb_magics
    from celerynb.notebook import tracebacks
    from celerynb.notebook.formatters import unregister_display_formatters
    from celerynb.tracking.submitted import disable_submit_log

    unregister_display_formatters(ip)
    tracebacks.disable()
    disable_submit_log()
    _follow_cells(ip, False)
    _call_optional("celerynb.notebook.nested_asyncio", "disable_nested_asyncio")


def _call_optional(module: str, function: str, *args: Any) -> None:
    """Call a hook of an optional part (display, asyncio) if it is installed."""
    import importlib

    try:
        hook = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        return
    hook(*args)


def _follow_cells(ip: Any, on: bool) -> None:
    """Re-running a cell closes the live displays its earlier runs made (display.lifetime)."""
    from celerynb.display import lifetime

    for event, callback in (("pre_run_cell", lifetime.on_pre_run_cell), ("post_run_cell", lifetime.on_post_run_cell)):
        registered = callback in ip.events.callbacks[event]
        if on and not registered:
            ip.events.register(event, callback)
        elif not on and registered:
            ip.events.unregister(event, callback)
