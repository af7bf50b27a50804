"""LM backends behind one protocol, looked up by name.

``get_backend("embedded")`` (the default CPU model), ``get_backend("gguf:/path/model.gguf")``,
``get_backend("openai", base_url=..., model=...)`` or ``"openai:<model>"``, ``get_backend("fake",
replies=[...])``. Backends import their optional dependencies only when built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ._base import Backend

if TYPE_CHECKING:
    from ..config import RewardConfig, RuntimeOptions

__all__ = ["Backend", "build_backend", "get_backend", "is_local_model"]

_LOCAL_KINDS = ("embedded", "gguf")


def is_local_model(spec: str) -> bool:
    """True for specs that run llama.cpp in this process (``embedded``, ``gguf:PATH``).

    >>> is_local_model("gguf:/m.gguf"), is_local_model("openai:m")
    (True, False)
    """
    return spec.partition(":")[0] in _LOCAL_KINDS


def get_backend(spec: str | Backend = "embedded", **options: Any) -> Backend:
    """Build a backend from a spec string, or return a Backend instance unchanged.

    >>> get_backend("openai:my-model", base_url="http://127.0.0.1:9/v1").model
    'my-model'
    """
    if not isinstance(spec, str):
        return spec
    kind, _, arg = spec.partition(":")
    if kind == "embedded":
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(model_name=arg or None, **options)
    if kind == "gguf":
        from .embedded import EmbeddedBackend

        if not arg:
            raise ConfigError("gguf backend needs a path: gguf:/path/to/model.gguf")
        return EmbeddedBackend(arg, **options)
    if kind == "openai":
        from .openai import OpenAIBackend

        if arg:
            options.setdefault("model", arg)
        return OpenAIBackend(**options)
    if kind == "fake":
        from .fake import FakeBackend

        return FakeBackend(**options)
    raise ConfigError(f"unknown backend {spec!r}; use embedded, gguf:PATH, openai[:MODEL] or fake")


def build_backend(config: RewardConfig, runtime: RuntimeOptions, **overrides: Any) -> Backend:
    """The backend a :class:`~fliprm.config.RewardConfig` names, with its runtime options.

    >>> from fliprm.config import RewardConfig, RuntimeOptions
    >>> build_backend(RewardConfig(backend="openai:m", extra_body={"x": 1}),
    ...               RuntimeOptions(base_url="http://127.0.0.1:9/v1")).extra_body
    {'x': 1}
    """
    kind = config.backend_kind
    opts: dict[str, Any] = {}
    if kind in _LOCAL_KINDS:
        # --concurrency on the embedded model is its number of llama.cpp slots
        opts = {"n_ctx": config.n_ctx, "n_threads": runtime.n_threads,
                "reuse_prompt_cache": not config.exact, "n_parallel": runtime.concurrency}
    elif kind == "openai":
        opts = {"base_url": runtime.base_url, "api_key": runtime.api_key,
                "timeout": runtime.timeout, "schema_mode": config.schema_mode,
                "extra_body": config.extra_body, "likelihood_mode": config.likelihood_mode}
        if config.model:
            opts["model"] = config.model
        if runtime.concurrency:
            opts["max_concurrency"] = runtime.concurrency
    opts.update(overrides)
    return get_backend(config.backend, **opts)
