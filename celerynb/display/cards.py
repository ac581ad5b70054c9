"""The cluster card: how a ``LocalCluster`` shows in a notebook (``templates/cluster_card.html.j2``)."""

from __future__ import annotations

from typing import Any

from .html import render


def cluster_card(status: dict[str, Any]) -> str:
    """HTML of ``LocalCluster.status()``: broker, source, beat, log, queues and workers, or "stopped"."""
    return render("cluster_card", status=status)
