"""Bulk submission: ``celerynb.map(task, items)`` (see :mod:`celerynb.bulk.submit`)."""

from celerynb.bulk.calls import BulkResult, BulkSubmitError
from celerynb.bulk.submit import CHUNK, map

__all__ = ["CHUNK", "BulkResult", "BulkSubmitError", "map"]
