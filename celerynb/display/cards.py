"""The cluster card: a small escaped HTML summary themed with JupyterLab's CSS variables."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px);"
    "color: var(--jp-ui-font-color1, #222); border: 1px solid var(--jp-border-color2, #ddd);"
    "border-radius: 4px; padding: 6px 10px; display: inline-block;"
)
_MUTED = "color: var(--jp-ui-font-color2, gray);"


def cluster_card(status: dict[str, Any]) -> str:
    if not status.get("running"):
        return f'<div class="celerynb-cluster" style="{_STYLE}"><b>celerynb cluster</b> <span style="{_MUTED}">stopped</span></div>'
    rows = [
        ("Broker", status.get("broker", "")),
        ("Source", status.get("source", "")),
        ("Beat", "on" if status.get("beat") else "off"),
        ("Worker log", status.get("log_file") or ""),
    ]
    workers = "".join(
        f"<tr><td>{escape(str(w['name']))}</td><td>{escape(w['kind'])}</td><td>{escape(str(w['pool']))}</td>"
        f"<td>{w['concurrency']}</td><td>{'yes' if w['alive'] else 'no'}</td></tr>"
        for w in status.get("workers", [])
    )
    queues = ", ".join(f"{escape(q)}: {n}" for q, n in status.get("queues", {}).items())
    head = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return (
        f'<div class="celerynb-cluster" style="{_STYLE}"><b>celerynb cluster</b>'
        f"<table>{head}<tr><th style='text-align:left'>Queues</th><td>{queues or '-'}</td></tr></table>"
        f"<table><tr style='{_MUTED}'><th>worker</th><th>kind</th><th>pool</th><th>concurrency</th><th>alive</th></tr>"
        f"{workers}</table></div>"
    )
