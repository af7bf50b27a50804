"""The one protocol every LM backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._types import Completion, GenerateRequest

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """Does generation and nothing else: no retries, no cache, no parsing.

    Retries, concurrency limits and caching live once, in :class:`fliprm.engine.Engine`.
    A backend raises only :class:`fliprm.errors.BackendError` subclasses.
    """

    #: short backend kind, e.g. ``"embedded"`` or ``"openai"``
    name: str
    #: identifies the model for cache keys and results (includes a content hash when known)
    model_id: str
    #: how many calls are worth running at once (1 for the CPU-bound embedded model)
    max_concurrency: int
    supports_json_schema: bool
    supports_forced_decoding: bool
    # Optional ``in_process: bool`` (default False): the model runs in this process's threads,
    # which a deadline cannot stop, so the Engine gives its calls no default total deadline.

    @property
    def cache_identity(self) -> dict[str, object]:
        """Everything about this backend that changes an answer to the same request (model
        file hash, context size, exactness, extra request fields, schema mode): part of every
        response-cache key."""
        ...

    async def generate(self, request: GenerateRequest) -> Completion: ...

    async def aclose(self) -> None: ...
