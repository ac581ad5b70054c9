"""Static HTML for progress summaries and task tables; every piece of user data is escaped.

Themed with JupyterLab's CSS variables (with fallbacks) so light and dark themes both read.
"""

from __future__ import annotations

from html import escape

from celerynb.display._views import GroupView, TaskView, counts_text

BOX = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px);"
    "color: var(--jp-ui-font-color1, #222);"
)
MUTED = "color: var(--jp-ui-font-color2, gray);"
COLORS = {
    "success": "var(--jp-success-color1, #4caf50)",
    "danger": "var(--jp-error-color1, #f44336)",
    "warning": "var(--jp-warn-color1, #ff9800)",
    "info": "var(--jp-info-color1, #2196f3)",
    "": "var(--jp-layout-color3, #bbb)",
}


def e(value: object) -> str:
    """Escape anything for HTML text and attributes."""
    return escape(str(value), quote=True)


def bar_html(percent: float, style: str) -> str:
    color = COLORS.get(style, COLORS["info"])
    return (
        '<div style="display:inline-block;width:160px;height:10px;vertical-align:middle;'
        'background:var(--jp-layout-color2, #eee);border-radius:3px;overflow:hidden">'
        f'<div class="celerynb-bar celerynb-{e(style or "pending")}" '
        f'style="width:{percent:.0f}%;height:100%;background:{color}"></div></div>'
    )


def task_row_html(view: TaskView) -> str:
    return (
        f"<tr><td>{e(view.name)}</td><td>{bar_html(view.percent, view.bar_style)}</td>"
        f"<td>{view.percent:.0f}%</td><td>{e(view.detail)}</td></tr>"
    )


def summary_html(group: GroupView | None, views: list[TaskView], elapsed: str | None = None) -> str:
    """The final state of a progress display, readable without a kernel (saved notebooks, GitHub)."""
    parts = [f'<div class="celerynb-progress-summary" style="{BOX}">']
    if group is not None:
        parts.append(
            f"<div><b>{group.total} tasks</b> {bar_html(group.percent, group.bar_style)} "
            f"{group.done}/{group.total} done <span style='{MUTED}'>{e(counts_text(group))}</span></div>"
        )
        for failure in group.failures:
            parts.append(f"<div style='{MUTED}'>{e(failure.name)}: {e(failure.detail)}</div>")
    if views:
        parts.append("<table>" + "".join(task_row_html(v) for v in views) + "</table>")
    if elapsed:
        parts.append(f"<div style='{MUTED}'>elapsed {e(elapsed)}</div>")
    parts.append("</div>")
    return "".join(parts)


def state_badge(state: str, style: str) -> str:
    return f'<span style="color:{COLORS.get(style, COLORS["info"])};font-weight:bold">{e(state)}</span>'
