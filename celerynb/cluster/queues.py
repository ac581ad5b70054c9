"""Read-only questions to the broker: how long are the queues."""

from __future__ import annotations

from celery import Celery


def queue_lengths(app: Celery, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue (0 for a queue the broker does not know yet)."""
    lengths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in names:
            try:
                lengths[name] = channel.queue_declare(name, passive=True).message_count
            except Exception:  # noqa: BLE001 - an unknown queue holds nothing
                lengths[name] = 0
                if not conn.transport.implements.asynchronous:
                    channel = conn.channel()
    return lengths


def purge(app: Celery, queue: str | None = None) -> int:
    """Remove waiting messages from ``queue`` (every declared queue when None); returns how many."""
    if queue is None:
        return app.control.purge()
    with app.connection_for_write() as conn:
        try:
            return conn.default_channel.queue_purge(queue) or 0
        except Exception:  # noqa: BLE001 - a queue the broker never saw holds nothing
            return 0


def cell_support(app: Celery, timeout: float = 0.5) -> dict[str, bool]:
    """Every worker that answers within ``timeout``: does it run shipped notebook cells?"""
    replies = app.control.broadcast("celerynb_cells", reply=True, timeout=timeout)
    support: dict[str, bool] = {}
    for reply in replies or []:
        for worker, answer in reply.items():
            support[worker] = bool(isinstance(answer, dict) and answer.get("accepts_cells"))
    return support
