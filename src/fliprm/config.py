"""One reward definition: everything that changes a reward, in one validated, fingerprinted object.

:class:`RewardConfig` holds what changes a reward (backend and model identity, method, template
family, decoding, truncation, parse-failure policy, echo guard, infer mode, backend options that
change answers). :class:`RuntimeOptions` holds what does not (where the server is, keys,
retries, concurrency, timeouts, the cache path, threads). Every entry point builds its rewards
from these two: Python (:class:`fliprm.FlipReward`), the CLI (its flags are derived from the
fields below, see :mod:`fliprm.cli._config_options`), ``fliprm serve``, the RL adapters (env vars
``FLIPRM_<FIELD>`` are derived the same way), Ray and the judges. Adding a reward option is one
field here plus its use; its flag, env var, validation and fingerprint follow.

The field defaults are the one default reward of every entry point: method ``pmi`` with the
echo guard (measured above F1 on held-out sets, bench/README.md). Named presets start from
them: ``"default"`` (the fields as they are: the library, ``fliprm score``, ``demo``, ``eval``,
``rerank``), ``"rl"`` (``fliprm serve`` and the RL adapters: the same reward, plus responses cut
at 8,000 characters and, on the F1 path, a failed parse as a None reward) and ``"paper"`` (the
reference path: F1, no guard, reasoning first, unconstrained, F1 on the raw text when parsing
fails).

>>> RewardConfig().method, RewardConfig().mask_echo
('pmi', True)
>>> RewardConfig.preset("rl").method == RewardConfig().method
True
>>> cfg = RewardConfig(method="f1", template="flip-short", max_tokens=64)
>>> cfg.family().contextual.name
'flip-short-contextual'
>>> len(cfg.fingerprint())
16
>>> RewardConfig(max_response_chars=0)
Traceback (most recent call last):
...
fliprm.errors.ConfigError: max_response_chars: must be >= 1 (leave it unset for no cut)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .registry import backend_usage, find_backend, method_names, method_spec, method_specs
from .templates import Template, get_template

__all__ = [
    "PRESETS",
    "RayOptions",
    "RewardConfig",
    "RuntimeOptions",
    "ServerOptions",
    "TemplateFamily",
    "config_error",
    "fingerprint_of",
]

#: bump when the scoring semantics change for the same settings (new prompts, new parsing), so
#: a resume never mixes rewards computed by different fliprm versions.
SCORING_VERSION = 3


def opt(default: Any, help: str, *, flag: str | None = None, short: str | None = None,
        cli: bool = True, registry: str | None = None) -> Any:
    """A config field with what its CLI flag needs (help text, flag name, short alias).

    ``registry``: ``"method"`` or ``"backend"``: the flag's help and choices come from that
    registry (:mod:`fliprm.registry`) when the CLI is built, so plugins show up there too.
    """
    extra: dict[str, Any] = {"flag": flag, "short": short, "cli": cli}
    if registry:
        extra["registry"] = registry
    return Field(default, description=help, json_schema_extra=extra)


def _registered_methods_schema(schema: dict[str, Any]) -> None:
    # the JSON schema lists the methods registered when it is asked for (plugins included)
    prop = schema.get("properties", {}).get("method")
    if prop is not None:
        prop["enum"] = method_names()


@dataclass(frozen=True)
class TemplateFamily:
    """The main template and the one used for items with a conversation context.

    Resolved together so a choice reaches every item: ``flip-short`` implies
    ``flip-short-contextual``. A user template that shows no ``{context}`` has no contextual
    twin unless one is given; items with a context then fail with an error that says so,
    instead of silently switching to another template.
    """

    main: Template
    contextual: Template | None

    def for_item(self, has_context: bool) -> Template:
        if not has_context:
            return self.main
        if self.contextual is None:
            raise ConfigError(
                f"template {self.main.name!r} cannot show a conversation context; give a "
                "contextual template too (contextual_template=..., --contextual-template)"
            )
        return self.contextual


_CONTEXTUAL = {"flip": "flip-contextual", "flip-short": "flip-short-contextual"}


class RewardConfig(BaseModel):
    """Everything that changes a FLIP reward. Frozen, validated once, fingerprinted.

    See the module docstring; each field's description is also its ``--flag`` help text. An
    invalid value raises :class:`~fliprm.errors.ConfigError` (a ``ValueError``) naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True,
                              json_schema_extra=_registered_methods_schema)

    def __init__(self, **values: Any) -> None:
        # a bad value is a one-line ConfigError naming the field (a ValueError too), not
        # pydantic's multi-line ValidationError
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(exc, type(self).__name__) from None

    backend: str = opt("embedded", "embedded | embedded:NAME | gguf:PATH | openai[:MODEL] | "
                       "fake (scripted dry run) | a registered backend", short="-b",
                       registry="backend")
    model: str | None = opt(None, "model name on the server (openai backend)")
    method: str = opt(
        "pmi", "pmi (default: the instruction's log-likelihood given the response minus given "
        "an empty response) | f1 (the paper: word F1 of the inferred instruction) | "
        "likelihood (mean log p(instruction | response), teacher-forced) | a registered "
        "method", registry="method")
    explain: bool = opt(False, "likelihood/pmi: also generate the inferred instruction (the "
                        "FLIP generation, same cache) and return it beside the reward")
    samples: int = opt(1, "f1: average the reward over this many sampled inferred "
                       "instructions (seeded; needs --temperature > 0)")
    template: str | Template = opt("flip-short", "built-in template family: flip-short "
                                   "(default), flip (the paper's reasoning-first prompt)")
    contextual_template: str | Template | None = opt(
        None, "template for items with a conversation context (default: the family's own)")
    max_tokens: int = opt(512, "generation cap in tokens (paper: 512)")
    temperature: float = opt(0.0, "0 = greedy (paper)")
    seed: int | None = opt(None, "sampling seed")
    top_p: float | None = opt(None, "nucleus sampling")
    constrained: bool = opt(True, "JSON-schema-constrained output where the backend has it")
    max_response_chars: int | None = opt(
        None, "cut longer responses to head (2/3) + tail (1/3) before inference")
    parse_failure: Literal["raw", "zero", "error"] = opt(
        "raw", "unparseable output: raw (reference: F1 on the raw text) | zero | error (None)")
    mask_echo: bool = opt(True, "mask text copied from the instruction (verbatim or nearly, "
                          "any length) before scoring: defends rewards against responses that "
                          "restate the prompt (--no-mask-echo turns it off)")
    infer: Literal["user", "system"] = opt("user", "chat items: infer the last user turn, or "
                                           "the system prompt (user turns become context)")
    similarity: str = opt("f1", "similarity of inferred vs true instruction", cli=False)
    extra_body: dict[str, Any] | None = opt(
        None, "openai backend: JSON merged into every request, e.g. "
        '\'{"chat_template_kwargs": {"enable_thinking": false}}\'')
    schema_mode: Literal["response_format", "json_schema", "off"] = opt(
        "response_format", "openai backend: how to ask for JSON output")
    likelihood_mode: Literal["auto", "forced", "prompt_logprobs"] = opt(
        "auto", "likelihood and pmi: the instruction forced token by token (a llama.cpp "
        "server) or its prompt log-probabilities in one pass (vLLM; the embedded model through "
        "llama.cpp's library); auto takes the one pass where the backend has it")
    exact: bool = opt(False, "embedded model: reprocess every prompt from scratch, so an "
                      "item's reward does not depend on the item before it (slower)")
    n_ctx: int = opt(8192, "embedded model: context window in tokens")

    # ---- validation -------------------------------------------------------------------------

    @field_validator("max_tokens", "samples", "n_ctx")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("max_response_chars")
    @classmethod
    def _cut(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 (leave it unset for no cut)")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not 0.0 <= v <= 5.0:
            raise ValueError("must be between 0 and 5")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError("must be in (0, 1]")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        method_spec(v)  # unknown names fail here, naming the registered ones
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        kind, _, arg = v.partition(":")
        spec = find_backend(kind)
        if spec is None:
            raise ValueError(f"unknown backend {v!r}; use {backend_usage()}")
        if spec.arg_required and not arg:
            raise ValueError(spec.arg_required)
        return v

    @field_validator("similarity")
    @classmethod
    def _similarity(cls, v: str) -> str:
        from .similarity import SIMILARITIES

        if v not in SIMILARITIES:
            raise ValueError(f"unknown similarity {v!r}; known: {', '.join(sorted(SIMILARITIES))}")
        return v

    @field_validator("template", "contextual_template")
    @classmethod
    def _template(cls, v: str | Template | None) -> str | Template | None:
        if isinstance(v, str):
            get_template(v)  # unknown names fail here, naming the built-ins
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RewardConfig:
        if self.samples > 1:
            if not method_spec(self.method).supports_samples:
                sampling = " or ".join(f"method={s.name!r}" for s in method_specs()
                                       if s.supports_samples)
                raise ValueError(f"samples > 1 applies to {sampling} ({self.method!r} does "
                                 "not sample)")
            if self.temperature <= 0:
                raise ValueError("samples > 1 needs temperature > 0: greedy samples are identical")
        spec = find_backend(self.backend_kind)
        if self.exact and not (spec and spec.local):
            raise ValueError("exact applies to the embedded model (embedded, gguf:PATH)")
        main = self.family().main
        if "response" not in main.fields and "output" not in main.fields:
            raise ValueError(f"template {main.name!r} has no {{response}} placeholder")
        return self

    # ---- derived ----------------------------------------------------------------------------

    def family(self) -> TemplateFamily:
        """The main and contextual templates, resolved together."""
        main = get_template(self.template)
        if self.contextual_template is not None:
            return TemplateFamily(main, get_template(self.contextual_template))
        if isinstance(self.template, str) and self.template in _CONTEXTUAL:
            return TemplateFamily(main, get_template(_CONTEXTUAL[self.template]))
        return TemplateFamily(main, main if "context" in main.fields else None)

    @property
    def backend_kind(self) -> str:
        return self.backend.partition(":")[0]

    def identity(self, model_id: str | None = None) -> dict[str, Any]:
        """Every setting that changes a reward, as plain JSON; what :meth:`fingerprint` hashes.

        ``model_id`` is the built backend's model identity (it carries the model file's hash);
        without it the backend spec stands in.
        """
        d = self.model_dump(mode="json", exclude={"template", "contextual_template", "backend"})
        fam = self.family()
        d["template"] = {"name": fam.main.name, "sha256": fam.main.sha256[:16]}
        d["contextual_template"] = (None if fam.contextual is None else
                                    {"name": fam.contextual.name,
                                     "sha256": fam.contextual.sha256[:16]})
        d["backend"] = self.backend_kind
        d["model_id"] = model_id or self.backend
        d["scoring_version"] = SCORING_VERSION
        return d

    def fingerprint(self, model_id: str | None = None) -> str:
        """A stable 16-hex-digit hash of :meth:`identity`."""
        return fingerprint_of(self.identity(model_id))

    def updated(self, **changes: Any) -> RewardConfig:
        """A validated copy with ``changes`` applied (``None`` values are ignored)."""
        values = {k: getattr(self, k) for k in type(self).model_fields}
        values.update({k: v for k, v in changes.items() if v is not None})
        return make_config(RewardConfig, values)

    @classmethod
    def preset(cls, name: str = "default", **changes: Any) -> RewardConfig:
        """A named preset (see :data:`PRESETS`) with ``changes`` on top.

        >>> RewardConfig.preset("paper").template, RewardConfig.preset("paper").method
        ('flip', 'f1')
        """
        try:
            base = PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
        return make_config(cls, {**base, **{k: v for k, v in changes.items() if v is not None}})


#: Defaults per use, defined once. Every entry point starts from the same reward: pmi with the
#: echo guard (the field defaults; bench/README.md: above F1 on IFBench and focus4, and the
#: guard holds the copy attacks that make raw likelihood trivially hackable, at no IFBench
#: cost). ``rl`` (``fliprm serve``, the RL adapters) differs only in how a trainer wants
#: failures and long inputs handled: responses cut at 8,000 characters (bounded cost per
#: sample), and on the F1 path a failed parse is a None reward (the trainer skips the sample)
#: rather than a guess. ``paper`` is the reference path: F1, reasoning first, unconstrained,
#: no guard, F1 on the raw text when parsing fails.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "rl": {"method": "pmi", "mask_echo": True, "max_response_chars": 8000,
           "parse_failure": "error", "max_tokens": 256},
    "paper": {"method": "f1", "mask_echo": False, "template": "flip", "constrained": False,
              "parse_failure": "raw", "max_tokens": 512, "temperature": 0.0},
}


class _Options(BaseModel):
    """Frozen options whose constructor raises a one-line ConfigError, as RewardConfig's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(exc, type(self).__name__) from None


class RuntimeOptions(_Options):
    """How rewards are computed, not what they are: never part of a fingerprint.

    >>> RuntimeOptions(concurrency=4).max_retries
    3
    """

    base_url: str | None = opt(None, "OpenAI-compatible URL, e.g. http://127.0.0.1:8000/v1")
    api_key: str | None = opt(None, "bearer token for the backend server")
    timeout: float = opt(120.0, "seconds per backend attempt, all of it (not per read)")
    total_timeout: float | None = opt(
        None, "seconds per call including retries (default: timeout x (max_retries + 1) plus "
        "the pauses between attempts)")
    max_retries: int = opt(3, "retries of transient backend errors")
    concurrency: int | None = opt(None, "calls in flight (default: the backend's own)")
    n_threads: int | None = opt(None, "embedded model: CPU threads (default: all allowed)")
    cache: str | None = opt(None, "SQLite response cache file", cli=False)

    @property
    def deadline_s(self) -> float:
        """The total deadline of one call with its retries: ``total_timeout`` if given, else
        every attempt's ``timeout`` plus the longest jittered pauses between them (the engine's
        backoff: 0.5 s doubling, x1.5 jitter, at most 30 s each). Always finite.

        >>> RuntimeOptions(timeout=10, max_retries=2).deadline_s
        32.25
        """
        if self.total_timeout is not None:
            return self.total_timeout
        from .engine import MAX_BACKOFF_S

        pauses = sum(min(0.5 * 2**k * 1.5, MAX_BACKOFF_S) for k in range(self.max_retries))
        return self.timeout * (self.max_retries + 1) + pauses

    @field_validator("max_retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("timeout", "concurrency", "n_threads", "total_timeout")
    @classmethod
    def _pos(cls, v: float | None) -> float | int | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v


class ServerOptions(BaseModel):
    """How ``fliprm serve`` serves (limits, timeouts, batching): never part of a fingerprint.

    One definition for :func:`fliprm.server.create_app`, :func:`fliprm.server.serve_config`
    and the ``fliprm serve`` flags (derived from these fields, like RewardConfig's).

    >>> opts = ServerOptions(max_body_mb=1)
    >>> opts.max_body_bytes, opts.replace(idle_timeout=5).write_deadline
    (1048576, 5.0)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = opt("127.0.0.1", "bind address; non-loopback needs --api-key")
    port: int = opt(8080, "port (0 = any free port)")
    #: clients must send it as a bearer token (every route but /health); the CLI's --api-key
    api_key: str | None = Field(None, repr=False, json_schema_extra={"cli": False})
    max_batch_items: int = opt(32, "items per backend batch", flag="--max-batch")
    max_wait_ms: float = opt(5.0, "milliseconds the first queued request waits for others to "
                             "join its batch")
    max_queue_items: int = opt(1024, "items queued before 503", flag="--max-queue")
    max_inflight_batches: int | None = opt(
        None, "batches scored at once (default: 1 for the embedded model, more for HTTP "
        "backends)")
    max_items_per_request: int = opt(1024, "items per request (413)")
    max_instruction_chars: int = opt(20_000, "a longer instruction is its item's error, "
                                     "not scored")
    request_timeout: float = opt(600.0, "seconds per request (504)")
    max_body_mb: float = opt(16.0, "request body cap in MiB (413)")
    failure_score: float = opt(0.0, "/get_reward value for failed items")
    graceful_timeout: float = opt(60.0, "seconds to finish in-flight work at shutdown")
    header_timeout: float = opt(30.0, "seconds a client may take to send a request's headers "
                                "and body")
    idle_timeout: float = opt(15.0, "seconds an idle kept-alive connection stays open")
    write_timeout: float | None = opt(None, "seconds a client may leave its reply unread "
                                      "before it is dropped (default: --idle-timeout)")
    max_connections: int | None = opt(512, "open connections at most (lowered to fit the open-file "
                               "limit); beyond it the connection waiting longest for its "
                               "request is closed, or the newcomer gets 503")
    drain_grace: float = opt(2.0, "at shutdown, seconds idle kept-alive connections stay open "
                             "answering 503")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = opt(
        "info", "uvicorn's log level")

    @field_validator("max_batch_items", "max_queue_items", "max_items_per_request",
                     "max_instruction_chars", "max_connections", "max_inflight_batches")
    @classmethod
    def _at_least_one(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("request_timeout", "max_body_mb", "graceful_timeout", "header_timeout",
                     "idle_timeout", "write_timeout")
    @classmethod
    def _positive_seconds(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("max_wait_ms", "drain_grace")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError("must be between 0 and 65535")
        return v

    @property
    def max_body_bytes(self) -> int:
        return round(self.max_body_mb * 1024 * 1024)

    @property
    def write_deadline(self) -> float:
        """``write_timeout``, or the idle timeout when unset."""
        return self.idle_timeout if self.write_timeout is None else self.write_timeout

    def replace(self, **changes: Any) -> ServerOptions:
        """A validated copy with ``changes``; also takes the older keywords ``max_body_bytes``
        and ``drain_timeout`` (= ``graceful_timeout``).

        >>> ServerOptions().replace(max_body_bytes=2000).max_body_bytes
        2000
        """
        if "max_body_bytes" in changes:
            changes["max_body_mb"] = changes.pop("max_body_bytes") / (1024 * 1024)
        if "drain_timeout" in changes:
            changes["graceful_timeout"] = changes.pop("drain_timeout")
        return make_config(ServerOptions, {**self.model_dump(), **changes})


class RayOptions(_Options):
    """How ``fliprm score --ray`` runs on Ray (cluster, actors, batches, shards): never part of
    a fingerprint. One definition for :func:`fliprm.scale.score_file_ray` and the ``--ray-*``
    flags of ``fliprm score`` (derived from these fields, like ServerOptions').

    >>> RayOptions(actors=2).batch_size, RayOptions().replace(shard_size=10).shard_size
    (16, 10)
    """

    address: str | None = opt(None, "with --ray: 'auto' joins a running cluster, or "
                              "ray://HOST:10001 (default: start a local Ray)",
                              flag="--ray-address")
    actors: int | None = opt(None, "with --ray: scoring actors (default 1, or one per "
                             "--base-url)")
    # the default is in the help text: the derived "(default: ...)" skips 1.0 (== True)
    cpus_per_actor: float = opt(1.0, "with --ray: CPUs reserved per actor; the embedded model "
                                "runs that many threads (default 1; 0.25 is plenty for HTTP)")
    batch_size: int = opt(16, "with --ray: rows per actor call")
    shard_size: int = opt(1000, "with --ray: rows per output shard, the unit of resumption")

    @field_validator("actors", "cpus_per_actor", "batch_size", "shard_size")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be positive")
        return v

    def replace(self, **changes: Any) -> RayOptions:
        """A validated copy with ``changes`` applied (``None`` values are ignored)."""
        values = {**self.model_dump(exclude_unset=True),
                  **{k: v for k, v in changes.items() if v is not None}}
        return make_config(RayOptions, values)


def config_error(exc: ValidationError, cls_name: str = "settings") -> ConfigError:
    """A one-line :class:`ConfigError` naming each bad field."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or cls_name
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return ConfigError("; ".join(parts))


def make_config(cls: type[Any], values: dict[str, Any]) -> Any:
    """``cls(**values)`` with validation errors as :class:`ConfigError`."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise config_error(exc, cls.__name__) from None


def fingerprint_of(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as canonical JSON.

    >>> fingerprint_of({"b": 1, "a": 2}) == fingerprint_of({"a": 2, "b": 1})
    True
    """
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every key that differs, nested keys dotted (for refusal messages).

    >>> describe_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: 2 -> 3']
    """
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_differences(a, b, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return out


def as_path(value: str | Path | None) -> str | None:
    return None if value is None else str(value)


#: env vars that configure a setting are this prefix plus the field name in upper case (read
#: by the pydantic-settings models of :mod:`fliprm.settings`)
ENV_PREFIX = "FLIPRM_"


def name_env_vars(message: str, from_env: Mapping[str, str]) -> str:
    """Rewrite the ``field: why`` parts of a one-line config error as ``FLIPRM_FIELD='raw': why``
    where the value came from the environment, so the error names what to fix.

    >>> name_env_vars("max_tokens: must be >= 1", {"max_tokens": "0"})
    "FLIPRM_MAX_TOKENS='0': must be >= 1"
    """
    parts = []
    for part in message.split("; "):
        field, sep, why = part.partition(": ")
        if sep and field in from_env:
            part = f"{ENV_PREFIX}{field.upper()}={from_env[field]!r}: {why}"
        parts.append(part)
    return "; ".join(parts)
