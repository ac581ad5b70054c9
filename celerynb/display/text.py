"""The text twin of the progress widget, for terminals, nbval, scripts and ``CELERYNB_NONINTERACTIVE=1``.

Its ``__repr__`` is deterministic (no ids, no times), so saved notebooks and nbval see the
outcome; ``wait()`` shows a live tqdm bar on a terminal.
"""

from __future__ import annotations

import sys
from typing import Any

from celerynb.display._base import ProgressDisplay, attached_to, current_cell, ipython
from celerynb.display._views import GroupView, TaskView


class TextProgress(ProgressDisplay):
    """Progress as text: one line per task for a few tasks, one aggregate line for many."""

    _handle: Any = None

    def show(self) -> TextProgress:
        """Display the current text in a notebook/IPython; updated in place when the tasks end."""
        ip = ipython()
        if ip is None:
            return self
        from IPython.display import display

        with self._lock:
            self._handle = display(self._bundle(), raw=True, display_id=True, metadata=self.output_metadata())
            self._shown_in = current_cell()
        return self

    def _repr_html_(self) -> str | None:
        from celerynb.config import noninteractive

        return None if noninteractive() else self.summary_html()

    def _ipython_display_(self) -> None:
        if self._handle is not None and current_cell() == getattr(self, "_shown_in", None):
            return  # progress() already showed it in this cell
        from IPython.display import display

        display(self._bundle(), raw=True, metadata=self.output_metadata())

    def _bundle(self) -> dict[str, str]:
        """Text and a static summary; text only in CI (deterministic: no ids, no times)."""
        html = self._repr_html_()
        return {"text/plain": self.text(), **({"text/html": html} if html is not None else {})}

    def publish_final(self) -> None:
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True, metadata=self.output_metadata())
        elif ipython() is None and not getattr(self, "_quiet", False):
            print(self.text(), file=sys.stderr)

    def draw(self, views: list[TaskView], group: GroupView | None) -> None:
        bar = getattr(self, "_tqdm", None)
        if bar is not None:
            percent = group.percent if group is not None else views[0].percent
            bar.n = round(percent, 1)
            bar.set_postfix_str(_views_summary(views, group), refresh=False)
            bar.refresh()

    def wait(self, timeout: float | None = None, cancel_on_interrupt: bool = False) -> Any:
        stream = sys.stderr
        if not self.finished and hasattr(stream, "isatty") and stream.isatty():
            with self.interruptible(cancel_on_interrupt):
                self._wait_with_bar(stream)
        with attached_to(None):
            return super().wait(timeout, cancel_on_interrupt)

    def _wait_with_bar(self, stream: Any) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm(total=100, unit="%", file=stream, leave=True,
                          bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}")
        try:
            while not self.finished:
                try:
                    self.monitor.wait(self.ids, 0.2)
                except TimeoutError:
                    pass
                self.refresh(background=False)
        finally:
            self._tqdm.close()
            self._tqdm = None


def _views_summary(views: list[TaskView], group: GroupView | None) -> str:
    if group is not None:
        return f"{group.done}/{group.total} done"
    return views[0].detail
