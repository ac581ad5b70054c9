"""A small document store for the predefined tasks: sample texts shipped with the package,
plus documents a user adds, plus the processed outputs the tasks write.

Files, not memory, so that workers in other processes see the same documents.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from celerynb import config

SAMPLES = Path(__file__).with_name("sample_documents")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

STOPWORDS = frozenset(
    """a an and are as at be but by can for from has have if in into is it its keep means not of on
    or so that the then they this to twice was were when while with your more most many""".split()
)


class DocumentNotFound(LookupError):
    """No document with that id in the store."""


def store_dir() -> Path:
    """Where added documents and outputs live; ``CELERYNB_DOCUMENTS_DIR`` overrides it."""
    override = os.environ.get("CELERYNB_DOCUMENTS_DIR")
    path = Path(override) if override else config.runtime_dir() / "celerynb-documents"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_id(document_id: str) -> str:
    if not isinstance(document_id, str) or not _SAFE_ID.match(document_id):
        raise ValueError(
            f"Invalid document id {document_id!r}: use letters, digits, '.', '_' or '-' (at most 128)."
        )
    return document_id


def add_document(document_id: str, text: str) -> Path:
    """Add or replace a document; returns its path."""
    path = store_dir() / f"{_check_id(document_id)}.txt"
    path.write_text(text, encoding="utf-8")
    return path


def list_documents() -> list[str]:
    ids = {p.stem for p in SAMPLES.glob("*.txt")} | {p.stem for p in store_dir().glob("*.txt")}
    return sorted(ids)


def load_document(document_id: str) -> str:
    _check_id(document_id)
    for base in (store_dir(), SAMPLES):
        path = base / f"{document_id}.txt"
        if path.exists():
            return path.read_text(encoding="utf-8")
    raise DocumentNotFound(f"No document {document_id!r}; known: {', '.join(list_documents())}.")


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]*", text)


def keywords(text: str, top_n: int = 5) -> list[str]:
    counts = Counter(w.lower() for w in words(text) if w.lower() not in STOPWORDS and len(w) > 2)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]]


def convert(text: str, fmt: str) -> Any:
    """Render a document as ``text``, ``json``, ``markdown`` or ``html``."""
    lines = text.strip().splitlines()
    title = lines[0].strip() if lines else ""
    body = " ".join(line.strip() for line in lines[1:] if line.strip())
    if fmt == "text":
        return text.strip()
    if fmt == "json":
        return {"title": title, "body": body}
    if fmt == "markdown":
        return f"# {title}\n\n{body}\n"
    if fmt == "html":
        from html import escape

        return f"<h1>{escape(title)}</h1>\n<p>{escape(body)}</p>\n"
    raise ValueError(f"Unknown format {fmt!r}: use 'text', 'json', 'markdown' or 'html'.")


def processed_dir() -> Path:
    path = store_dir() / "processed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_output(document_id: str, output: dict[str, Any]) -> Path:
    """Write atomically: each call writes its own temporary file in the same directory and
    renames it over the output, so concurrent calls for one document (threads or processes)
    never rename one another's temporary file away; the last rename wins, whole."""
    path = processed_dir() / f"{_check_id(document_id)}.json"
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")  # umask-respecting, unlike mkstemp
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(json.dumps(output))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def outputs() -> list[dict[str, Any]]:
    found = []
    for path in sorted(processed_dir().glob("*.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def remove_outputs_older_than(max_age: float) -> list[str]:
    cutoff = time.time() - max_age
    removed = []
    for path in processed_dir().glob("*.json"):
        try:
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed.append(path.stem)
        except FileNotFoundError:
            continue
    return sorted(removed)
