"""The look every display shares, defined once: JupyterLab's CSS variables with fallbacks.

Every template gets it as ``theme``, so the progress summary, the task table, the cluster
cards and the badges cannot drift apart, and light and dark JupyterLab themes both read.
Task states get their colour through their bar style (``_views.BAR_STYLES``, which the live
ipywidgets bars use as ``bar_style`` too): SUCCESS green, FAILURE/LOST red, RETRY/REVOKED
orange, STARTED/PROGRESS blue, PENDING grey.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_TEXT = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px);"
    "color: var(--jp-ui-font-color1, #222);"
)

#: ipywidgets' bar styles as CSS colours ("" is a task not started yet).
STYLE_COLORS: Mapping[str, str] = MappingProxyType({
    "success": "var(--jp-success-color1, #4caf50)",
    "danger": "var(--jp-error-color1, #f44336)",
    "warning": "var(--jp-warn-color1, #ff9800)",
    "info": "var(--jp-info-color1, #2196f3)",
    "": "var(--jp-ui-font-color2, #757575)",  # PENDING: 4.6:1 on white, about 6:1 on the dark theme
})


#: Bar fills as plain colours: JupyterLab's sanitizer drops ``var(...)`` values from the HTML of
#: a notebook it does not trust (one saved elsewhere), and a bar without its fill shows nothing.
#: Mid tones, readable on the light and the dark theme alike.
BAR_FILLS: Mapping[str, str] = MappingProxyType({
    "success": "#43a047", "danger": "#e53935", "warning": "#fb8c00", "info": "#1e88e5", "": "#9e9e9e",
})


@dataclass(frozen=True)
class Theme:
    """CSS for ``style`` attributes: declarations (``text``, ``muted``, ``card``) and colours."""

    #: Font and text colour of every display.
    text: str = _TEXT
    #: Secondary text: counts, elapsed time, failures under a summary, column headers of a card.
    muted: str = "color: var(--jp-ui-font-color2, gray);"
    #: A bordered box: the cluster card and the mode/tasks box of ``%celery status``.
    card: str = _TEXT + (
        " border: 1px solid var(--jp-border-color2, #ddd);border-radius: 4px; padding: 6px 10px; display: inline-block;"
    )
    #: The empty part of a progress bar (plain, as the fills: see :data:`BAR_FILLS`).
    track: str = "rgba(128, 128, 128, 0.25)"
    colors: Mapping[str, str] = field(default_factory=lambda: STYLE_COLORS)
    fills: Mapping[str, str] = field(default_factory=lambda: BAR_FILLS)

    def color(self, style: str) -> str:
        """The text colour of a bar style; an unknown one reads as ``info`` (running)."""
        return self.colors.get(style, self.colors["info"])

    def fill(self, style: str) -> str:
        """The bar fill of a bar style; an unknown one reads as ``info`` (running)."""
        return self.fills.get(style, self.fills["info"])


THEME = Theme()
