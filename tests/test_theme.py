"""Every colour a display puts text in is readable (WCAG AA, 4.5:1) on JupyterLab's light and
dark themes, computed from the themes' own CSS as installed, and from our plain fallbacks."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from celerynb.rendering import theme

THEMES = Path(sys.prefix) / "share/jupyter/lab/themes/@jupyterlab"


def css_variables(name: str) -> dict[str, str]:
    css = (THEMES / f"theme-{name}-extension/index.css").read_text()
    return dict(re.findall(r"(--jp-[\w-]+):\s*([^;}]+)", css))


def resolve(value: str, variables: dict[str, str]) -> str:
    """A CSS value with its ``var(--x, fallback)`` resolved from ``variables``."""
    match = re.fullmatch(r"var\((--[\w-]+)(?:,\s*(.+))?\)", value.strip())
    if not match:
        return value.strip()
    name, fallback = match.groups()
    found = variables.get(name)
    return resolve(found, variables) if found is not None else resolve(fallback or "", variables)


def rgba(color: str) -> tuple[float, float, float, float]:
    color = color.strip().lower()
    named = {"white": "#ffffff", "black": "#000000", "gray": "#808080"}
    color = named.get(color, color)
    if color.startswith("#"):
        digits = color[1:]
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return (*(int(digits[i:i + 2], 16) for i in (0, 2, 4)), 1.0)
    parts = [p.strip() for p in re.fullmatch(r"rgba?\((.*)\)", color).group(1).split(",")]
    alpha = float(parts[3]) if len(parts) == 4 else 1.0
    return (*(float(p) for p in parts[:3]), alpha)


def over(color: str, background: str) -> tuple[float, float, float]:
    r, g, b, a = rgba(color)
    br, bg, bb, _ = rgba(background)
    return (r * a + br * (1 - a), g * a + bg * (1 - a), b * a + bb * (1 - a))


def luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(foreground: str, background: str) -> float:
    lighter, darker = sorted((luminance(over(foreground, background)), luminance(over(background, "#fff"))),
                             reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_contrast_is_computed_as_wcag_does():
    assert contrast("#000", "#fff") == pytest.approx(21.0)
    assert contrast("#777", "#fff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize("style", sorted(theme.BADGE_FILLS))
def test_state_badges_read_on_every_theme(style):
    """White on the state's fill: the same on both themes, since the badge brings its background."""
    assert contrast(theme.BADGE_TEXT, theme.BADGE_FILLS[style]) >= 4.5
    assert f"background-color:{theme.BADGE_FILLS[style]}" in theme.THEME.badge(style)


@pytest.mark.parametrize("name", ["light", "dark"])
@pytest.mark.parametrize("declaration", ["text", "muted"])
def test_text_reads_on_both_themes(name, declaration):
    variables = css_variables(name)
    color = re.search(r"color:\s*(var\([^;]+\)|#\w+)", getattr(theme.THEME, declaration)).group(1)
    for background in ("--jp-layout-color0", "--jp-layout-color1"):  # the notebook and cell areas
        back = resolve(variables[background], variables)
        assert contrast(resolve(color, variables), back) >= 4.5, (name, declaration, background)
    # Where JupyterLab's variables are missing (nbconvert, GitHub): the fallback, on white.
    assert contrast(resolve(color, {}), "#ffffff") >= 4.5
