"""The look every display shares, defined once: JupyterLab's CSS variables with fallbacks.

Every template gets it as ``theme``, so the progress summary, the task table, the cluster
cards and the badges cannot drift apart, and light and dark JupyterLab themes both read.
Task states get their colour through their bar style (``_views.BAR_STYLES``, which the live
ipywidgets bars use as ``bar_style`` too): SUCCESS green, FAILURE/LOST red, RETRY/REVOKED
orange, STARTED/PROGRESS blue, PENDING grey; as a badge (white on the colour) in text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_TEXT = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px);"
    "color: var(--jp-ui-font-color1, #222);"
)

#: State badges: white text on a dark fill of the state's colour ("" is a task not started
#: yet). Plain colours, legible on every theme: no single text colour reaches WCAG AA (4.5:1)
#: on both white and JupyterLab's dark #111, but white on these fills reads at 5:1 or more
#: whatever the page (``tests/test_theme.py`` computes it).
BADGE_FILLS: Mapping[str, str] = MappingProxyType({
    "success": "#2e7d32", "danger": "#c62828", "warning": "#a84300", "info": "#1565c0", "": "#616161",
})
BADGE_TEXT = "#ffffff"


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
    muted: str = "color: var(--jp-ui-font-color2, #616161);"
    #: A bordered box: the cluster card and the mode/tasks box of ``%celery status``.
    card: str = _TEXT + (
        " border: 1px solid var(--jp-border-color2, #ddd);border-radius: 4px; padding: 6px 10px; display: inline-block;"
    )
    #: The empty part of a progress bar (plain, as the fills: see :data:`BAR_FILLS`).
    track: str = "rgba(128, 128, 128, 0.25)"
    badges: Mapping[str, str] = field(default_factory=lambda: BADGE_FILLS)
    fills: Mapping[str, str] = field(default_factory=lambda: BAR_FILLS)

    def badge(self, style: str) -> str:
        """CSS of a state badge of a bar style; an unknown one reads as ``info`` (running)."""
        fill = self.badges.get(style, self.badges["info"])
        return (f"background-color:{fill};color:{BADGE_TEXT};border-radius:3px;padding:0 4px;"
                "font-weight:bold;white-space:nowrap")

    def fill(self, style: str) -> str:
        """The bar fill of a bar style; an unknown one reads as ``info`` (running)."""
        return self.fills.get(style, self.fills["info"])


THEME = Theme()
