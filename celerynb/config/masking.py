"""Secrets out of everything we show: URLs and texts with their passwords replaced by ``***``."""

from __future__ import annotations

import re

_PASSWORD_IN_URL = re.compile(r"(?P<scheme>[a-z0-9+]+://)(?P<user>[^:@/]*):(?P<password>[^@/]+)@", re.I)


def mask_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for reprs and logs."""
    if not url:
        return ""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(url))


def mask_text(text: str) -> str:
    """Mask every URL password inside a longer text (error messages, log lines)."""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
