"""The signed records of notebook cells, the cluster's cell key, and shipping them.

A record is JSON under ``celerynb:cell:<version>`` in the result backend's Redis, signed with
HMAC-SHA256 under the cell key; its version is the hash of everything that defines the task.
A kernel ships each version it sends, and again before it expires (see :mod:`.cells` for the
worker side: what runs a version, and what refuses one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

from celery import Celery

from celerynb import config

logger = logging.getLogger("celerynb.cells")

HEADER = "celerynb_cell"
KEY_ENV = "CELERYNB_CELL_KEY"
KEY_FILE_ENV = "CELERYNB_CELL_KEY_FILE"
RECORD_TTL = 7 * 24 * 3600


class CellRefused(RuntimeError):
    """This worker will not run a shipped cell (no key, bad signature, record missing)."""


# -- the key -----------------------------------------------------------------------------------
_process_key: str | None = None


def set_process_key(key: str | None) -> None:
    """The key of a cluster started by this process (the kernel's LocalCluster)."""
    global _process_key
    _process_key = key
    _shipped.clear()  # records signed with another key are refused: sign and store anew


def cell_key() -> str | None:
    """``CELERYNB_CELL_KEY``, else ``CELERYNB_CELL_KEY_FILE``, else this process's cluster,
    else the discovery file of a running ``celerynb up``."""
    key = os.environ.get(KEY_ENV)
    if key:
        return key
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            return open(path, encoding="utf-8").read().strip() or None
        except OSError:
            logger.error("cell key file %s cannot be read", path)
            return None
    if _process_key:
        return _process_key
    record = config.read_discovery()
    return record.get("cell_key") if record else None


# -- records -----------------------------------------------------------------------------------
def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def make_record(name: str, function: str, source: str, options: dict[str, Any]) -> dict[str, Any]:
    """An unsigned record; its version is the hash of everything that defines the task."""
    payload = {"name": name, "function": function, "source": source, "options": options}
    payload["version"] = hashlib.sha256(_canonical(payload)).hexdigest()[:32]
    return payload


def sign(record: dict[str, Any], key: str) -> dict[str, Any]:
    body = {k: v for k, v in record.items() if k != "signature"}
    return {**body, "signature": hmac.new(key.encode(), _canonical(body), hashlib.sha256).hexdigest()}


def verify(record: dict[str, Any], key: str) -> bool:
    body = {k: v for k, v in record.items() if k != "signature"}
    expected = hmac.new(key.encode(), _canonical(body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, str(record.get("signature", "")))


def record_key(version: str) -> str:
    return f"celerynb:cell:{version}"


def _redis(app: Celery) -> Any:
    backend = app.backend
    client = getattr(backend, "client", None)
    if client is None:
        raise CellRefused(
            "Cell tasks on worker processes need a Redis result backend to ship the cell "
            f"(this app's backend is {type(backend).__name__})."
        )
    return client


def store(app: Celery, record: dict[str, Any]) -> None:
    _redis(app).set(record_key(record["version"]), json.dumps(record), ex=RECORD_TTL)


def fetch(app: Celery, version: str) -> dict[str, Any] | None:
    """The stored record of ``version`` (None if absent); CellRefused if it is no cell record."""
    raw = _redis(app).get(record_key(version))
    return parse_record(raw, version) if raw else None


_RECORD_TEXT_FIELDS = ("name", "function", "source", "version", "signature")


def parse_record(raw: bytes | str, version: str) -> dict[str, Any]:
    """A stored record, decoded and of the right shape (its signature is checked later)."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        record = None
    if (not isinstance(record, dict) or not all(isinstance(record.get(f), str) for f in _RECORD_TEXT_FIELDS)
            or not isinstance(record.get("options", {}), dict)):
        raise CellRefused(
            f"the store holds no valid cell record for version {version} (not a JSON record with "
            f"{', '.join(_RECORD_TEXT_FIELDS)}): run the cell again in its notebook to store it anew."
        )
    return record


#: Seconds between two checks that a shipped record is still there.
CHECK_EVERY = 2.0
#: (version, result backend) -> when to check the record again. A record that expired, was
#: evicted or was lost in a server restart is stored anew by the next submission after that.
_shipped: dict[tuple[str, str], float] = {}


def ship(app: Celery, record: dict[str, Any]) -> None:
    """Store the signed record where workers fetch it; on later submissions, at most every
    :data:`CHECK_EVERY` s, one EXPIRE both renews it and says whether it is still there.

    Called on every submission: the common case is one dict lookup."""
    marker = (record["version"], str(app.conf.result_backend))
    now = time.monotonic()
    due = _shipped.get(marker)
    if due is not None and due > now:
        return
    key = cell_key()
    if not key:
        return  # worker processes will refuse with a clear reason; in-kernel workers need nothing
    if due is None or not _redis(app).expire(record_key(record["version"]), RECORD_TTL):
        store(app, sign(record, key))
    _shipped[marker] = now + CHECK_EVERY


def forget_shipped(backend_url: str) -> None:
    """The records shipped to ``backend_url`` are gone (a restart): the next submission stores them."""
    for marker in [m for m in _shipped if m[1] == backend_url]:
        del _shipped[marker]
