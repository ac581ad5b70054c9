"""The guide's predefined tasks, with real bodies.

Each task has an explicit ``tasks.*`` name so that any worker, in the kernel or in another
process, finds it under the name the guide uses.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from typing import Any

from celery.utils.log import get_task_logger

from celerynb.workers import documents
from celerynb.workers.celery_app import app
from celerynb.workers.track import raise_if_cancelled

logger = get_task_logger(__name__)

FORMATS = ("text", "json", "markdown", "html")


class TemporaryError(Exception):
    """A failure worth retrying (a flaky dependency, a timeout)."""


class PermanentError(Exception):
    """A failure that retrying cannot fix."""


def analyze(text: str, top_n: int = 5) -> dict[str, Any]:
    words = documents.words(text)
    sentences = [s for s in re.split(r"[.!?]+\s", text.strip()) if s.strip()]
    return {
        "words": len(words),
        "unique_words": len({w.lower() for w in words}),
        "sentences": len(sentences),
        "avg_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0.0,
        "reading_time_s": round(len(words) / 200 * 60, 1),
        "keywords": documents.keywords(text, top_n),
    }


@app.task(name="tasks.process_document")
def process_document(document_id: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert a stored document and summarise it.

    Args:
        document_id: id of a document in the store (``celerynb.workers.documents``).
        options: ``format`` (text, json, markdown, html; default json) and ``keywords``
            (how many, default 5).

    Returns:
        The converted content with word counts and keywords; also saved to the store, so
        running it twice gives the same result (idempotent).
    """
    options = dict(options or {})
    fmt = options.get("format", "json")
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    text = documents.load_document(document_id)
    stats = analyze(text, int(options.get("keywords", 5)))
    output = {
        "document_id": document_id,
        "format": fmt,
        "title": text.strip().splitlines()[0].strip() if text.strip() else "",
        "content": documents.convert(text, fmt),
        "word_count": stats["words"],
        "keywords": stats["keywords"],
        "checksum": hashlib.sha256(text.encode()).hexdigest()[:16],
    }
    documents.save_output(document_id, output)
    logger.info("processed %s as %s (%d words)", document_id, fmt, stats["words"])
    return output


@app.task(name="tasks.analyze_content")
def analyze_content(content: str, top_n: int = 5) -> dict[str, Any]:
    """Text statistics of ``content``: words, sentences, reading time and keywords.

    ``content`` may also be the id of a stored document, written ``doc:<id>``.
    """
    if not isinstance(content, str):
        raise TypeError(f"analyze_content expects text, got {type(content).__name__}.")
    if content.startswith("doc:"):
        content = documents.load_document(content[4:])
    return analyze(content, top_n)


@app.task(name="tasks.cleanup")
def cleanup(max_age: float = 3600.0) -> dict[str, Any]:
    """Remove processed outputs older than ``max_age`` seconds (the guide runs it hourly)."""
    removed = documents.remove_outputs_older_than(max_age)
    logger.info("cleanup removed %d outputs", len(removed))
    return {"removed": len(removed), "documents": removed}


REPORT_KINDS = ("daily", "weekly", "monthly")


@app.task(name="tasks.generate_report")
def generate_report(kind: str = "daily") -> dict[str, Any]:
    """Summarise the processed outputs in the store (the guide runs ``daily`` at 7:30)."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"Unknown report kind {kind!r}: use one of {', '.join(REPORT_KINDS)}.")
    outs = documents.outputs()
    formats: dict[str, int] = {}
    for out in outs:
        formats[out.get("format", "?")] = formats.get(out.get("format", "?"), 0) + 1
    return {
        "kind": kind,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "documents": len(outs),
        "total_words": sum(int(o.get("word_count", 0)) for o in outs),
        "formats": formats,
    }


@app.task(bind=True, name="tasks.long_process")
def long_process(self, items: list[Any], delay: float = 0.1) -> dict[str, Any]:
    """Work through ``items`` one by one, reporting PROGRESS after each, as in the guide.

    ``delay`` is the time each item takes (seconds), so that progress is visible.
    """
    total = len(items)
    for i, _item in enumerate(items):
        raise_if_cancelled(self)  # cancel works on in-kernel (threads/solo) workers too
        if delay:
            time.sleep(delay)
        progress = int((i + 1) / total * 100)
        self.update_state(
            state="PROGRESS",
            meta={
                "progress": progress,
                "current": i + 1,
                "total": total,
                "status": f"Processing item {i + 1}/{total}",
            },
        )
    return {"status": "completed", "processed": total}


def some_operation(arg: Any, attempt: int) -> dict[str, Any]:
    """The guide's ``some_operation``: behaviour chosen by ``arg``.

    ``"flaky:N"`` fails with :class:`TemporaryError` on the first N attempts; ``"fail"`` fails
    permanently; anything else succeeds.
    """
    if isinstance(arg, str) and arg.startswith("flaky:"):
        failures = int(arg.split(":", 1)[1])
        if attempt < failures:
            raise TemporaryError(f"temporary failure on attempt {attempt + 1} of {arg!r}")
        return {"arg": arg, "attempts": attempt + 1}
    if arg == "fail":
        raise PermanentError(f"cannot process {arg!r}")
    return {"arg": arg, "attempts": attempt + 1}


@app.task(bind=True, max_retries=3, name="tasks.risky_task")
def risky_task(self, arg: Any, base_delay: float = 1.0) -> dict[str, Any]:
    """Retry temporary errors with exponential backoff; record permanent ones, as in the guide.

    Retries wait ``base_delay * 2 ** retries`` seconds (1, 2, 4 s by default).
    """
    try:
        return some_operation(arg, self.request.retries)
    except TemporaryError as exc:
        countdown = base_delay * 2**self.request.retries
        raise self.retry(exc=exc, countdown=countdown) from None
    except Exception as exc:
        logger.error(f"Task failed: {exc}")
        self.update_state(
            state="FAILURE",
            meta={
                "exc_type": type(exc).__name__,
                "exc_message": str(exc),
                # Not in the guide: lets a client that reads this state rebuild the real
                # exception class (the final FAILURE, stored when the exception propagates, has it).
                "exc_module": type(exc).__module__,
                "custom_error": "Task encountered an error",
            },
        )
        raise


__all__ = [
    "process_document",
    "analyze_content",
    "cleanup",
    "generate_report",
    "long_process",
    "risky_task",
    "TemporaryError",
    "PermanentError",
]
