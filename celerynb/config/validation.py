"""Is a broker or result backend URL usable at all: its shape, its scheme, its escaping.

kombu and Celery look at a URL only when they first connect, deep inside a worker start or a
``.delay()``: a typo then surfaces as ``KeyError: 'No such transport: http'``, or as 15 s of
retries against ``amqp://localhost`` for a URL without ``://``. These checks take microseconds,
run before anything is switched, and name the problem and the fix (the URL password masked).
Whether the server answers is :mod:`celerynb.config.reachability`'s question.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from celerynb.config.masking import mask_text, mask_url

BROKER_EXAMPLES = "redis://HOST:6379/0 or amqp://USER:PASSWORD@HOST:5672//"
BACKEND_EXAMPLES = "redis://HOST:6379/0, or rpc:// for results over the broker"
_ALMOST_A_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<slashes>/{0,3})(?P<rest>.+)$", re.DOTALL)
_COMMON_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sentinel", "rpc")
_PASSWORD_PARAM = re.compile(r"[?&]password=", re.IGNORECASE)


class InvalidURL(ValueError):
    """A broker or result backend URL that cannot work: malformed, or a scheme nobody serves."""


def check_broker_url(url: str) -> None:
    """Raise :class:`InvalidURL` unless kombu has a transport for ``url`` and its shape is sound."""
    for one in _split_failover(url):
        scheme = _check_shape(one, "broker", BROKER_EXAMPLES)
        transport = scheme.split("+", 1)[0]  # kombu's rule: ``redis+socket://`` is the redis transport
        from kombu.transport import get_transport_cls

        try:
            get_transport_cls(transport)
        except KeyError:
            raise InvalidURL(f"{scheme!r} is not a broker scheme (in {mask_url(one)}): use {BROKER_EXAMPLES}.") from None
        except ImportError as exc:
            raise InvalidURL(
                f"{mask_url(one)}: kombu's {transport!r} transport needs the package {exc.name!r}: "
                f"pip install it, or use {BROKER_EXAMPLES}."
            ) from None
        _check_kombu_parses(one)


def _check_kombu_parses(url: str) -> None:
    """kombu parses a URL when a connection is made (no I/O): what it cannot parse fails here."""
    from kombu import Connection

    if _PASSWORD_PARAM.search(url):  # kombu 5.7.0: TypeError "multiple values for keyword argument"
        raise InvalidURL(
            f"kombu reads no password from the query string of a broker URL ({mask_url(url)}): put it "
            "before the host, redis://:PASSWORD@HOST:6379/0 (percent-encoded)."
        )
    try:
        Connection(url).release()
    except Exception as exc:  # noqa: BLE001 - whatever kombu raises, the URL is unusable
        reason = " ".join(mask_text(str(exc), url).split())
        raise InvalidURL(f"kombu cannot use the broker URL {mask_url(url)}: {type(exc).__name__}: {reason}") from None


def check_backend_url(url: str) -> None:
    """Raise :class:`InvalidURL` unless Celery has a result backend for ``url`` and its shape is sound."""
    scheme = _check_shape(url, "result backend", BACKEND_EXAMPLES)
    from celery.app.backends import BACKEND_ALIASES, by_url

    try:
        by_url(url)
    except Exception as exc:  # noqa: BLE001 - Celery raises several kinds for "no such backend"
        name = scheme.split("+", 1)[0]
        if name in BACKEND_ALIASES and isinstance(exc, ImportError):
            raise InvalidURL(
                f"{mask_url(url)}: Celery's {name!r} result backend needs the package {exc.name!r}: "
                f"pip install it, or use {BACKEND_EXAMPLES}."
            ) from None
        raise InvalidURL(
            f"{scheme!r} is not a result backend scheme (in {mask_url(url)}): use {BACKEND_EXAMPLES}."
        ) from None


def _split_failover(url: str) -> list[str]:
    """kombu's failover list ``redis://a;redis://b`` as its URLs: kombu splits at every ``;``."""
    if not isinstance(url, str) or ";" not in url:
        return [url]
    pieces = url.split(";")
    if not all("://" in piece for piece in pieces):
        raise InvalidURL(
            f"The broker URL {mask_url(url)} holds a ';', which separates failover URLs for kombu: "
            "a password holding ';' must be percent-encoded (%3B)."
        )
    return pieces


def _check_shape(url: str, role: str, examples: str) -> str:
    """The URL's scheme, once it has one, no whitespace, and a password that ends where it seems to."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL(f"No {role} URL given: pass one, e.g. {examples}.")
    shown = mask_url(url)
    if any(char.isspace() for char in url):
        raise InvalidURL(
            f"The {role} URL {shown!r} contains whitespace: remove it, or percent-encode it in a password (%20)."
        )
    if "://" not in url:
        almost = _ALMOST_A_URL.match(url)
        if almost and (almost["slashes"] or almost["scheme"].lower() in _COMMON_SCHEMES):
            guess = mask_url(f"{almost['scheme']}://{almost['rest']}")
            raise InvalidURL(f"{shown!r} is not a {role} URL (no '://' after the scheme): did you mean {guess}?")
        raise InvalidURL(f"{shown!r} is not a {role} URL: expected {examples}.")
    scheme, _, rest = url.partition("://")
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": an unbalanced '[' or ']' before the path
        raise InvalidURL(
            f"The {role} URL {shown} has an unbalanced '[' or ']': an IPv6 host is written [::1], and a "
            f"password holding brackets must be percent-encoded (urllib.parse.quote(password, safe=''))."
        ) from None
    if "@" in rest[len(parts.netloc):]:
        raise InvalidURL(
            f"The {role} URL {shown} has an '@' after its host part: a password holding '/', '?', '#' or '@' "
            f"must be percent-encoded (urllib.parse.quote(password, safe='')), an '@' elsewhere written %40."
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is no number in range
    except ValueError:
        raise InvalidURL(f"The port in the {role} URL {shown} is not a number from 0 to 65535.") from None
    return scheme
