"""The Cancel / Retry failed buttons under a live ``TaskTable``.

The table itself is plain HTML (cheap to redraw, readable in a saved notebook), so its buttons
are a small widget of their own, in an output of their own under its own display id. While
neither button has anything to act on, that output holds an empty text instead of the widget:
a saved notebook then keeps no widget view that would read "model not found" on reopening.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celerynb import _compat
from celerynb.display._base import attached_to


class ActionBar:
    """Cancel (the unfinished tasks) and Retry failed (the FAILURE/REVOKED ones), each shown only
    when it has something to act on."""

    def __init__(self, cancel: Callable[[], Any], retry: Callable[[], Any], parent: dict | None) -> None:
        import ipywidgets as w

        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning",
                                      tooltip="Revoke the table's unfinished tasks")
        self.retry_button = w.Button(description="Retry failed", icon="redo", button_style="info",
                                     tooltip="Send the failed and cancelled tasks again (celerynb.retry_failed)")
        self.message = w.Label()
        self.cancel_button.on_click(lambda _b: self._run(cancel))
        self.retry_button.on_click(lambda _b: self._run(retry))
        for button in (self.cancel_button, self.retry_button):
            _compat.act_on_clicks_at_once(button)  # even while a cell blocks
        self.box = w.HBox([self.cancel_button, self.retry_button, self.message])
        self.box.add_class("celerynb-table-actions")
        self.parent = parent
        self.display_id: str | None = None
        self.shown: bool | None = None  # the widget (True) or the empty placeholder (False) is out

    def _run(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a click has no cell to raise into: say it beside the buttons
            self.message.value = str(exc)

    def _bundle(self, active: bool) -> dict[str, Any]:
        if not active:
            return {"text/plain": ""}
        data = _compat.widget_mimebundle(self.box)
        data["text/plain"] = ""
        return data

    def show(self, unfinished: int, failed: int) -> None:
        """Put the bar (or its placeholder) in the output, under the table."""
        from IPython.display import display

        self._set(unfinished, failed)
        active = bool(unfinished or failed)
        handle = display(self._bundle(active), raw=True, display_id=True)
        self.display_id, self.shown = handle.display_id, active

    def update(self, unfinished: int, failed: int) -> None:
        """The buttons for these counts; the widget comes back (or goes) when that changes."""
        self._set(unfinished, failed)
        active = bool(unfinished or failed)
        if self.display_id is None or active == self.shown:
            return
        from IPython.display import update_display

        with attached_to(self.parent):
            update_display(self._bundle(active), raw=True, display_id=self.display_id)
        self.shown = active

    def _set(self, unfinished: int, failed: int) -> None:
        self.cancel_button.layout.display = None if unfinished else "none"
        self.cancel_button.description = f"Cancel ({unfinished})"
        self.retry_button.layout.display = None if failed else "none"
        self.retry_button.description = f"Retry failed ({failed})"
