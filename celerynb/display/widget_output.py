"""How a widget display is shown and ends: the live widget under a display id, then static
HTML + text in its place (what a saved notebook keeps). Shared by the progress bars and the
canvas tree.
"""

from __future__ import annotations

from typing import Any

from celerynb import _compat
from celerynb.display._base import attached_to, current_cell, ipython, latest_request


class WidgetOutput:
    """Mixin of a :class:`~celerynb.display._base.ProgressDisplay` drawn in ``self.box``."""

    _handle_id: str | None = None
    _shown_in: Any = None

    def _retry_clicked(self) -> None:
        from celerynb.display.actions import retry_failed

        try:
            retry_failed(self)
        except Exception as exc:  # noqa: BLE001 - a click has no cell to raise into: say it beside the buttons
            self.clock.value = f"retry failed: {exc}"

    # -- output ----------------------------------------------------------------------------
    def _bundle(self, final: bool) -> dict[str, Any]:
        """The widget while tasks run; once final, only static HTML and text: JupyterLab prefers a
        widget view to the HTML beside it and shows "model not found" for it in a saved notebook."""
        if final:  # failures too: a saved notebook must show them (retry: celerynb.retry_failed)
            return {"text/plain": self.text(), "text/html": self.summary_html()}
        data = _compat.widget_mimebundle(self.box)
        data["text/plain"] = self.text()
        return data

    def show(self) -> Any:
        if ipython() is None:
            return self
        from IPython.display import display

        with self._lock:
            handle = display(self._bundle(self.finished), raw=True, display_id=True, metadata=self.output_metadata())
            self._handle_id = handle.display_id
            self._shown_in = current_cell()
        return self

    def publish_final(self) -> None:
        if self._handle_id is None:
            return
        from IPython.display import update_display

        update_display(self._bundle(True), raw=True, display_id=self._handle_id, metadata=self.output_metadata())

    def revive(self) -> None:
        """After a retry: the live widget again where the final summary was."""
        if self._handle_id is None:
            return
        from IPython.display import update_display

        with attached_to(latest_request() or self._parent):
            update_display(self._bundle(False), raw=True, display_id=self._handle_id)

    def _ipython_display_(self) -> None:
        if self._handle_id is not None and current_cell() == self._shown_in:
            return  # progress() already showed it in this cell
        from IPython.display import display

        display(self._bundle(self.finished), raw=True, metadata=self.output_metadata())

    def _repr_mimebundle_(self, **_: Any) -> dict[str, Any]:
        return self._bundle(self.finished)


