"""LM backends behind one protocol, looked up by name in the backend registry.

``get_backend("embedded")`` (the default CPU model), ``get_backend("gguf:/path/model.gguf")``,
``get_backend("openai", base_url=..., model=...)`` or ``"openai:<model>"``, ``get_backend("fake",
replies=[...])``, or any backend a plugin registered (:func:`fliprm.registry.register_backend`).
The built-ins register below, as a plugin would; their modules (and optional dependencies) are
imported only when one is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..registry import backend_usage, find_backend, register_backend
from ._base import Backend

if TYPE_CHECKING:
    from ..config import RewardConfig, RuntimeOptions

__all__ = ["Backend", "build_backend", "get_backend", "is_local_model"]


def _local_options(config: RewardConfig, runtime: RuntimeOptions) -> dict[str, Any]:
    # --concurrency on the embedded model is its number of llama.cpp slots
    return {"n_ctx": config.n_ctx, "n_threads": runtime.n_threads,
            "reuse_prompt_cache": not config.exact, "n_parallel": runtime.concurrency,
            "likelihood_mode": config.likelihood_mode}


def _openai_options(config: RewardConfig, runtime: RuntimeOptions) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "base_url": runtime.base_url, "api_key": runtime.api_key, "timeout": runtime.timeout,
        "schema_mode": config.schema_mode, "extra_body": config.extra_body,
        "likelihood_mode": config.likelihood_mode}
    if config.model:
        opts["model"] = config.model
    if runtime.concurrency:
        opts["max_concurrency"] = runtime.concurrency
    return opts


register_backend("embedded", factory="fliprm.backends.embedded:EmbeddedBackend", local=True,
                 supports_forced_decoding=True, options=_local_options, arg="model_name",
                 usage=("embedded", "embedded:NAME"))
register_backend("gguf", factory="fliprm.backends.embedded:EmbeddedBackend", local=True,
                 supports_forced_decoding=True, options=_local_options, arg="model_path",
                 arg_required="gguf backend needs a path: gguf:/path/to/model.gguf",
                 usage="gguf:PATH")
# log-probabilities: forced decoding on llama.cpp servers, prompt log-probs on vLLM; the built
# backend asks the server which (hosted APIs and Ollama give neither)
register_backend("openai", factory="fliprm.backends.openai:OpenAIBackend",
                 supports_forced_decoding=True, supports_prompt_logprobs=True,
                 options=_openai_options, arg="model", usage="openai[:MODEL]")
register_backend("fake", factory="fliprm.backends.fake:FakeBackend",
                 supports_forced_decoding=True, usage="fake", help="scripted dry run")


def is_local_model(spec: str) -> bool:
    """True for specs that run a model in this process (``embedded``, ``gguf:PATH``).

    >>> is_local_model("gguf:/m.gguf"), is_local_model("openai:m")
    (True, False)
    """
    found = find_backend(spec.partition(":")[0])
    return found is not None and found.local


def get_backend(spec: str | Backend = "embedded", **options: Any) -> Backend:
    """Build a backend from a spec string, or return a Backend instance unchanged.

    >>> get_backend("openai:my-model", base_url="http://127.0.0.1:9/v1").model
    'my-model'
    """
    if not isinstance(spec, str):
        return spec
    kind, _, arg = spec.partition(":")
    found = find_backend(kind)
    if found is None:
        raise ConfigError(f"unknown backend {spec!r}; use {backend_usage()}")
    return found.build(arg, **options)


def build_backend(config: RewardConfig, runtime: RuntimeOptions, **overrides: Any) -> Backend:
    """The backend a :class:`~fliprm.config.RewardConfig` names, with its runtime options.

    >>> from fliprm.config import RewardConfig, RuntimeOptions
    >>> build_backend(RewardConfig(backend="openai:m", extra_body={"x": 1}),
    ...               RuntimeOptions(base_url="http://127.0.0.1:9/v1")).extra_body
    {'x': 1}
    """
    kind, _, arg = config.backend.partition(":")
    found = find_backend(kind)
    if found is None:
        raise ConfigError(f"unknown backend {config.backend!r}; use {backend_usage()}")
    opts = found.constructor_options(config, runtime)
    opts.update(overrides)
    return found.build(arg, **opts)
