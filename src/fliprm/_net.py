"""What every network call shares: credentials kept out of text, and bounded waits.

Every URL or exception message that holds one is shown through :func:`redact_url` /
:func:`redact` (errors, results, identities, logs, the console), so ``--base-url
http://user:PASS@host/v1`` never leaks PASS. Waits the server asks for (``Retry-After``) are
capped by :data:`MAX_RETRY_AFTER_S` and by the caller's remaining deadline.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MAX_RETRY_AFTER_S", "redact", "redact_url", "retry_after_s", "strip_credentials"]

#: the longest ``Retry-After`` obeyed; a server asking for more gets this (or the time left)
MAX_RETRY_AFTER_S = 30.0

# scheme://userinfo@ where userinfo has no "/", whitespace or quote; the scheme is kept
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/\s@'\"<>]+)@")


def _mask(info: str) -> str:
    user, sep, _ = info.partition(":")
    # a lone token (https://TOKEN@host) is a secret too; a "user:" keeps the user for debugging
    return f"{user}:***" if sep else "***"


def redact_url(url: str) -> str:
    """``url`` with any password (or lone token) in its user info replaced by ``***``.

    >>> redact_url("http://bob:hunter2@host:8000/v1")
    'http://bob:***@host:8000/v1'
    >>> redact_url("http://host:8000/v1")
    'http://host:8000/v1'
    """
    return redact(url)


def redact(text: str) -> str:
    """``text`` (an exception message, a log line) with the credentials of every URL in it
    replaced by ``***``.

    >>> redact("ConnectError for http://a:b@h/v1/models")
    'ConnectError for http://a:***@h/v1/models'
    """
    if "@" not in text:
        return text
    return _USERINFO.sub(lambda m: m["scheme"] + _mask(m["info"]) + "@", text)


def strip_credentials(url: str) -> str:
    """``url`` without its user info: what identifies a server (cache keys), not who logs in.

    >>> strip_credentials("http://bob:hunter2@host:8000/v1")
    'http://host:8000/v1'
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def retry_after_s(value: str | float | None, cap: float = MAX_RETRY_AFTER_S) -> float | None:
    """Seconds a ``Retry-After`` value (seconds form) asks for, capped at ``cap``; ``None``
    when absent or unreadable (an HTTP date: the caller's own backoff applies).

    >>> retry_after_s("3600"), retry_after_s("2"), retry_after_s("Wed, 21 Oct 2026 07:28:00 GMT")
    (30.0, 2.0, None)
    """
    try:
        wait = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(wait) else min(max(wait, 0.0), cap)
