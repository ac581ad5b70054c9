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


def cell_support(app: Celery, timeout: float = 0.5) -> dict[str, bool | None]:
    """Every worker that answers within ``timeout``: does it run shipped notebook cells?

    True or False (no cell key) for celerynb's workers, None for plain Celery workers. One
    standard ``inspect stats``, which every worker answers: celerynb's add a ``celerynb``
    field to it (:class:`~celerynb.workers.cells.CellSupportStep`).
    """
    replies = app.control.inspect(timeout=timeout).stats() or {}
    support: dict[str, bool | None] = {}
    for worker, stats in replies.items():
        ours = stats.get("celerynb") if isinstance(stats, dict) else None
        support[worker] = bool(ours.get("accepts_cells")) if isinstance(ours, dict) else None
    return support
