"""Exceptions raised by fliprm.

The tree::

    FlipError
    ├── ConfigError            a bad option, template or spec, found before any work starts
    ├── InputError             one input item is unusable (names the item and the field)
    ├── MissingDependency      an optional extra or the model wheels are not installed
    ├── ModelIntegrityError    a model file does not match its pinned sha256
    └── BackendError           an LM call failed
        ├── BackendUnavailable connection refused/reset, server gone (retried)
        ├── BackendTimeout     an attempt or the whole call ran out of time (retried)
        ├── RateLimited        HTTP 429 (retried)
        ├── ServerError        HTTP 5xx (retried)
        └── BadResponse        4xx or a malformed reply (not retried)
            └── ContextOverflow the prompt does not fit the model's context window

Errors from httpx or the llama.cpp runtime are translated at the backend boundary, so callers
only ever catch these.

A result that failed says what kind of failure it was (``FlipResult.error_kind``), one of the
closed set :data:`ErrorKind`, derived from the exception by :func:`error_kind`:

* ``bad_input``: the item itself is unusable (a missing or non-text field, a duplicate id, an
  over-long instruction, a per-item template problem); fix the data.
* ``timeout``: the call ran out of time (:class:`BackendTimeout`); worth a retry.
* ``overflow``: the prompt did not fit the model's context, even with the response cut
  (:class:`ContextOverflow`); use a model with a longer context or cut the inputs.
* ``backend``: any other failed LM call (unreachable, 4xx/5xx, a malformed reply).
* ``parse``: the model answered, but not in the expected shape (F1 method,
  ``parse_failure="error"``).
* ``internal``: a bug in fliprm or a plugin; the message names the exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

__all__ = [
    "ERROR_KINDS",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BadResponse",
    "ConfigError",
    "ContextOverflow",
    "ErrorKind",
    "FlipError",
    "InputError",
    "MissingDependency",
    "ModelIntegrityError",
    "RateLimited",
    "ServerError",
    "error_kind",
    "format_error_counts",
]

#: what kind of failure a result records (``FlipResult.error_kind``); see the module docstring
ErrorKind = Literal["bad_input", "backend", "timeout", "overflow", "parse", "internal"]
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)


class FlipError(Exception):
    """Root of every error fliprm raises on purpose."""


class ConfigError(FlipError, ValueError):
    """An option, template or backend spec is invalid."""


class InputError(FlipError, ValueError):
    """An input item cannot be scored; the message names the item and the field.

    ``where`` (the item: ``"item 3"``, ``"line 7"``) is kept as data beside the message and
    starts it once, here.

    >>> exc = InputError("field 'response' is missing", where="line 7")
    >>> str(exc), exc.where, exc.detail
    ("line 7: field 'response' is missing", 'line 7', "field 'response' is missing")
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.detail = message


class MissingDependency(FlipError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class ModelIntegrityError(FlipError):
    """A model file's sha256 does not match the pinned value; it is never loaded."""


class BackendError(FlipError):
    """An LM call failed. ``transient`` errors are retried by the engine."""

    transient: bool = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class BackendUnavailable(BackendError):
    transient = True


class BackendTimeout(BackendError):
    transient = True


class RateLimited(BackendError):
    transient = True

    def __init__(
        self, message: str, *, status_code: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class ServerError(BackendError):
    transient = True


class BadResponse(BackendError):
    transient = False


class ContextOverflow(BadResponse):
    """The prompt (``n_prompt`` tokens) does not fit the model's window (``n_ctx`` tokens).

    Raised by the backends where they learn it (the server's reply, parsed once at the
    boundary); the reward catches the type and cuts the response to fit. Either count is None
    where the server does not say it.

    >>> exc = ContextOverflow(5000, 4096)
    >>> exc.n_prompt, exc.n_ctx, str(exc)
    (5000, 4096, 'the prompt (5000 tokens) exceeds the context window (4096 tokens)')
    """

    def __init__(self, n_prompt: int | None, n_ctx: int | None, message: str | None = None, *,
                 status_code: int | None = 400) -> None:
        if message is None:
            said = ["?" if n is None else str(n) for n in (n_prompt, n_ctx)]
            message = (f"the prompt ({said[0]} tokens) exceeds the context window "
                       f"({said[1]} tokens)")
        super().__init__(message, status_code=status_code)
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only arguments: rebuild from the counts (Ray sends exceptions between processes)
        return (_rebuild_overflow, (self.n_prompt, self.n_ctx, str(self), self.status_code))


def _rebuild_overflow(n_prompt: int | None, n_ctx: int | None, message: str,
                      status_code: int | None) -> ContextOverflow:
    return ContextOverflow(n_prompt, n_ctx, message, status_code=status_code)


def error_kind(exc: BaseException) -> ErrorKind:
    """The :data:`ErrorKind` of an exception caught while scoring one item.

    >>> error_kind(InputError("item 3: field 'response' is missing")), error_kind(KeyError("x"))
    ('bad_input', 'internal')
    >>> error_kind(BackendTimeout("slow")), error_kind(ContextOverflow(9, 8))
    ('timeout', 'overflow')
    """
    if isinstance(exc, ContextOverflow):
        return "overflow"
    if isinstance(exc, BackendTimeout):
        return "timeout"
    if isinstance(exc, (InputError, ConfigError)):
        return "bad_input"
    if isinstance(exc, FlipError):
        return "backend"
    return "internal"


def format_error_counts(counts: Mapping[str, int]) -> str:
    """An error count with its kinds, for summaries: most frequent kind first.

    >>> format_error_counts({"timeout": 1, "bad_input": 2})
    '3 (2 bad_input, 1 timeout)'
    >>> format_error_counts({})
    '0'
    """
    total = sum(counts.values())
    if not total:
        return "0"
    parts = sorted(((n, k) for k, n in counts.items() if n), key=lambda p: (-p[0], p[1]))
    return f"{total} ({', '.join(f'{n} {k}' for n, k in parts)})"
