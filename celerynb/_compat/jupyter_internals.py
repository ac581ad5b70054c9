"""The standard library's, ipywidgets' and ipykernel's internals celerynb reaches for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

# -- the standard library, ipywidgets and ipykernel ---------------------------------------------------------------


def run_before_thread_join_at_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit before non-daemon threads (``concurrent.futures``) are joined, as a plain ``atexit``
    hook is not: ``threading._register_atexit`` (CPython 3.9-3.13), to stop a worker whose pool thread is busy."""
    register = getattr(threading, "_register_atexit", lambda _hook: None)
    with suppress(RuntimeError):  # already shutting down
        register(hook)


def act_on_clicks_at_once(widget: Any) -> None:
    """A click acts while a cell blocks: handled on its own subshell, ``Comm._reply_subshell_for`` (ipykernel 7.4.0)."""
    if hasattr(comm := getattr(widget, "comm", None), "_reply_subshell_for"):
        comm._reply_subshell_for = lambda _data, default: default


def widget_mimebundle(widget: Any) -> dict[str, Any]:
    """What Jupyter would display for a widget: ``DOMWidget._repr_mimebundle_()`` (ipywidgets 8.1.9)."""
    return dict(widget._repr_mimebundle_())


