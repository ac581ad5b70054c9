"""Secrets out of everything we show: URLs and texts with their passwords replaced by ``***``.

Users paste passwords as they are, so a URL's userinfo may hold ``@``, ``/``, ``:``, ``?``,
``#`` or ``%``-escapes: it ends at the *last* ``@`` of the URL (over-masking a path that holds an
``@`` is the price of never showing a password). Query parameters such as ``?password=`` (which
redis-py and kombu accept, also for unix sockets) are masked too; ``?username=`` stays visible.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote, unquote

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: ``;`` then a scheme: the next URL of a failover list (``sentinel://a;sentinel://b``).
_NEXT_URL = re.compile(r";[A-Za-z][A-Za-z0-9+.-]*://")
#: A secret's value runs to the next ``&name=`` (an ``&`` not followed by one is part of it).
_SECRET_PARAM = re.compile(
    r"(?<=[?&])(?P<name>[\w.-]*(?:password|passwd|pwd|secret|token)[\w.-]*)=(?P<value>(?:[^&]|&(?![\w.-]+=))*)",
    re.IGNORECASE,
)
_WHITESPACE = re.compile(r"\s")
#: Shorter "passwords" would mask ordinary words of a message.
_MIN_SCRUB_LENGTH = 4


def mask_url(url: str | None) -> str:
    """Return ``url`` (or a ``;``-separated list of URLs) with every password replaced by ``***``."""
    if not url:
        return ""
    return _mask(str(url), in_text=False)


def mask_text(text: str, *urls: str | None) -> str:
    """Mask every URL password inside a longer text (error messages, log lines).

    A URL in a text ends at whitespace, so a password holding raw whitespace cannot be told
    apart from the words after it: pass the URLs the text may quote as ``urls``, and their
    passwords are hidden wherever they appear (also escaped or unescaped).
    """
    masked = _mask(str(text), in_text=True)
    for secret in sorted({s for url in urls for s in secrets_in(url)}, key=len, reverse=True):
        masked = masked.replace(secret, MASK)
    return masked


def secrets_in(url: str | None) -> set[str]:
    """The passwords a URL holds, as written, percent-decoded and percent-encoded (long enough ones)."""
    found: set[str] = set()
    for start, end in _url_spans(url or "", in_text=False):
        rest = (url or "")[start:end]
        param = _SECRET_PARAM.search(rest)
        at = rest.rfind("@", 0, param.start() if param else len(rest))
        if at >= 0 and ":" in rest[:at]:
            found.add(rest[:at].partition(":")[2])
        found |= {m["value"] for m in _SECRET_PARAM.finditer(rest[at + 1:])}
    variants = found | {unquote(s) for s in found} | {quote(s, safe="") for s in found}
    return {s for s in variants if len(s) >= _MIN_SCRUB_LENGTH and s != MASK}


def _mask(text: str, *, in_text: bool) -> str:
    out: list[str] = []
    pos = 0
    for start, end in _url_spans(text, in_text=in_text):
        out.append(text[pos:start] + _mask_after_scheme(text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _url_spans(text: str, *, in_text: bool) -> Iterator[tuple[int, int]]:
    """Each URL of ``text`` as (just after its ``scheme://``, its end)."""
    pos = 0
    while (scheme := _SCHEME.search(text, pos)) is not None:
        end = _url_end(text, scheme.end(), in_text)
        yield scheme.end(), end
        pos = end


def _url_end(text: str, start: int, in_text: bool) -> int:
    """Where the URL that starts at ``start`` (just after ``scheme://``) ends."""
    end = len(text)
    if in_text and (space := _WHITESPACE.search(text, start)) is not None:
        end = space.start()
    first_at = text.find("@", start, end)
    if first_at >= 0 and (following := _NEXT_URL.search(text, first_at, end)) is not None:
        end = following.start()
    return end


def _mask_after_scheme(rest: str) -> str:
    # The userinfo ends at the last '@' before any ``?password=`` (whose value may hold one).
    param = _SECRET_PARAM.search(rest)
    at = rest.rfind("@", 0, param.start() if param else len(rest))
    if at < 0:
        return _mask_params(rest)
    user, colon, password = rest[:at].partition(":")
    userinfo = f"{user}:{MASK}" if colon and password else rest[:at]
    return f"{userinfo}@{_mask_params(rest[at + 1:])}"


def _mask_params(rest: str) -> str:
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}={MASK}" if m["value"] else m[0], rest)
