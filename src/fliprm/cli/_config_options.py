"""CLI flags derived from the config objects: one definition per option, for every command.

:func:`reward_options` adds a ``--flag`` for every :class:`~fliprm.config.RewardConfig` and
:class:`~fliprm.config.RuntimeOptions` field (name, type, help text from the field itself), plus
``--preset``, the template-file flags and the cache flags, to a Typer command; the command
receives one :class:`CliSettings` instead of twenty keyword arguments. Flags left out keep the
preset's value, so ``fliprm serve`` (preset ``rl``) and ``fliprm score`` (preset ``default``)
differ only in their starting point.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from .._net import redact
from ..config import (
    ENV_PREFIX,
    PRESETS,
    RayOptions,
    RewardConfig,
    RuntimeOptions,
    ServerOptions,
    make_config,
    name_env_vars,
)
from ..errors import ConfigError, FlipError
from ..model import cache_dir
from ..settings import EnvSource, RewardEnv, RuntimeEnv, ServerEnv
from ..templates import Template

__all__ = ["CliSettings", "fail", "flag_name", "ray_options", "reward_options", "server_options"]

err = Console(stderr=True)

#: flag names that differ from ``--<field-name>``
_FLAG_NAMES = {"api_key": "--backend-api-key", "n_threads": "--threads"}
_ENVVARS = {"api_key": "FLIPRM_BACKEND_API_KEY"}


def fail(message: str, code: int = 2) -> typing.NoReturn:
    """Print a one-line error (no traceback) and exit (2: usage or settings error); URL
    credentials in it are masked."""
    # soft_wrap: one line however narrow the terminal, so logs and greps see it whole
    err.print(f"[red]error:[/red] {escape(redact(message))}", soft_wrap=True)
    raise typer.Exit(code)


@dataclass(frozen=True)
class CliSettings:
    """What a scoring command was asked for: the reward, the runtime and the cache."""

    config: RewardConfig
    runtime: RuntimeOptions
    base_urls: tuple[str, ...]
    cache: Path | None
    #: the cache path came from --cache (not the default location)
    cache_explicit: bool = False

    def reward(self, **kwargs: Any) -> Any:
        """A :class:`~fliprm.FlipReward` for these settings (with the cache, if any)."""
        from ..reward import FlipReward

        kwargs.setdefault("cache", self.cache)
        return FlipReward(config=self.config, runtime=self.runtime, **kwargs)


def _plain(annotation: Any) -> tuple[Any, list[str] | None]:
    """The CLI type for a field annotation, and its choices for a Literal."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin is Literal:
        return str, [str(a) for a in get_args(annotation)]
    if origin in (typing.Union, types.UnionType):
        if any(a is Template for a in args):
            return str, None
        if len(args) == 1:
            return _plain(args[0])
    if origin is dict or annotation is dict:
        return str, None  # JSON text
    for a in args:
        if get_origin(a) is dict:
            return str, None
    return annotation, None


def _registered(kind: str) -> tuple[str, list[str] | None]:
    """Help text and choices of a flag whose values a registry owns (plugins included)."""
    from .. import registry

    if kind == "method":
        return registry.methods_help(), registry.method_names()
    return registry.backends_help(), None


def flag_name(model: type[BaseModel], name: str) -> str:
    """The ``--flag`` of a config field.

    >>> flag_name(RayOptions, "address"), flag_name(RayOptions, "shard_size")
    ('--ray-address', '--shard-size')
    """
    extra = model.model_fields[name].json_schema_extra or {}
    return (_FLAG_NAMES.get(name) or extra.get("flag")  # type: ignore[union-attr, return-value]
            or "--" + name.replace("_", "-"))


def _params(model: type[BaseModel], exclude: Iterable[str],
            replicas: bool = False) -> list[inspect.Parameter]:
    out = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        if name in exclude or not extra.get("cli", True):  # type: ignore[union-attr]
            continue
        typ, choices = _plain(field.annotation)
        flag = flag_name(model, name)
        help_ = field.description or ""
        if extra.get("registry"):  # type: ignore[union-attr]
            help_, choices = _registered(extra["registry"])  # type: ignore[index]
        if choices:
            help_ += f" [{'|'.join(choices)}]"
        default = field.default
        if default not in (None, False, True) and not isinstance(default, dict):
            help_ += f" (default: {default})"
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        if extra.get("short"):  # type: ignore[union-attr]
            decls.append(extra["short"])  # type: ignore[index]
        if name == "base_url":
            typ = list[str]  # repeatable so that a second one is refused, not silently dropped
            if replicas:
                help_ += "; repeat it with --ray for one actor per replica"
        option = typer.Option(*decls, help=help_, envvar=_ENVVARS.get(name),
                              show_default=False, metavar=None if typ is bool else "VALUE")
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[typ | None, option]))
    return out


_EXTRA = [
    ("preset", Annotated[str | None, typer.Option(
        "--preset", help=f"starting point for every setting: {' | '.join(PRESETS)} "
        "(paper = the reference path: reasoning first, unconstrained, raw-text fallback)")]),
    ("system_template", Annotated[Path | None, typer.Option(
        "--system-template", help="system prompt file (reference style, str.format)")]),
    ("user_template", Annotated[Path | None, typer.Option(
        "--user-template", help="user prompt file with {response}")]),
    ("cache", Annotated[Path | None, typer.Option(
        "--cache", help="SQLite response cache file")]),
    ("no_cache", Annotated[bool, typer.Option("--no-cache", help="no response cache")]),
]


def _with_options(param: str, params: list[inspect.Parameter],
                  build: Callable[[dict[str, Any]], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Typer command: add ``params`` to its signature, and call it with
    ``param=build(the values given for them)`` instead (what every options decorator does)."""
    names = {p.name for p in params}

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in sig.parameters.values() if p.name != param]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            kwargs[param] = build(given)
            return fn(**kwargs)

        all_params = own + params
        wrapper.__signature__ = sig.replace(parameters=all_params,  # type: ignore[attr-defined]
                                            return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in all_params}
        del wrapper.__wrapped__  # type: ignore[attr-defined]  (Typer must read this signature)
        return wrapper

    return deco


def _model_options(model: type[BaseModel], param: str, *, exclude: Iterable[str] = (),
                   env: type[EnvSource] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A flag per field of ``model``, passed as ``param=model(...)``; with ``env``, a field
    without its flag comes from ``FLIPRM_<FIELD>``. A bad value is a one-line error (exit 2)."""

    def build(given: dict[str, Any]) -> Any:
        used: dict[str, str] = {}
        if env is not None:
            used = {k: v for k, v in env().given().items() if given.get(k) is None}
            given.update(used)
        try:
            return make_config(model, {k: v for k, v in given.items() if v is not None})
        except FlipError as exc:
            fail(name_env_vars(str(exc), used))

    return _with_options(param, _params(model, set(exclude)), build)


def reward_options(
    *, preset: str = "default", exclude: Iterable[str] = (), default_cache: bool = True,
    replicas: bool = False, env: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Typer command: add the derived flags, pass ``settings: CliSettings``.

    ``default_cache``: without ``--cache``/``--no-cache`` use ``<cache dir>/responses.sqlite``.
    ``replicas``: ``--base-url`` may be repeated (``score --ray``: one URL per replica); other
    commands talk to one server and refuse a second URL.
    ``env``: a setting without its flag comes from ``FLIPRM_<FIELD>`` (and the preset from
    ``FLIPRM_PRESET``), as for the RL adapters; a bad value is a one-line error naming the var.
    """
    exclude = set(exclude)
    derived = _params(RewardConfig, exclude) + _params(RuntimeOptions, exclude, replicas)
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY,
                               default=None if n != "no_cache" else False, annotation=a)
             for n, a in _EXTRA if n not in exclude]
    return _with_options("settings", derived + extra, lambda given: _settings(
        given, preset, default_cache, replicas, env))


def server_options(
    *, exclude: Iterable[str] = (), env: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Typer command: a ``--flag`` for every :class:`~fliprm.config.ServerOptions`
    field (as :func:`reward_options` does for the reward), passed as ``server: ServerOptions``.

    Stack it under :func:`reward_options`; a bad value is a one-line error (exit 2).
    ``env``: a field without its flag comes from ``FLIPRM_<FIELD>`` (e.g.
    ``FLIPRM_FAILURE_SCORE``), as the reward settings do.
    """
    return _model_options(ServerOptions, "server", exclude=exclude,
                          env=ServerEnv if env else None)


def ray_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Typer command: a flag per :class:`~fliprm.config.RayOptions` field
    (``--ray-address``, ``--actors``, ``--cpus-per-actor``, ``--batch-size``, ``--shard-size``),
    passed as ``ray_options: RayOptions``; its ``model_fields_set`` says which were given."""
    return _model_options(RayOptions, "ray_options")


def _from_env(given: dict[str, Any]) -> dict[str, str]:
    """Fill unset settings from ``FLIPRM_*``; return the raw values used, by field name.

    The backend's key is not among them: ``--backend-api-key`` reads FLIPRM_BACKEND_API_KEY
    itself, and for ``fliprm serve`` the old FLIPRM_API_KEY is the server's key."""
    env = {**RewardEnv().given(), **RuntimeEnv().given()}
    used = {k: v for k, v in env.items() if given.get(k) is None}
    for k, raw in used.items():
        if k == "base_url":
            given[k] = [raw]
        elif k == "cache":
            if not given.get("no_cache"):
                given[k] = Path(raw)
        else:
            given[k] = raw  # validated with the rest below (pydantic coerces "64", "false")
    return used


def _settings(given: dict[str, Any], preset: str, default_cache: bool,
              replicas: bool = False, env: bool = False) -> CliSettings:
    used = _from_env(given) if env else {}
    try:
        preset = given.pop("preset", None) or preset
        sys_t, user_t = given.pop("system_template", None), given.pop("user_template", None)
        cache, no_cache = given.pop("cache", None), given.pop("no_cache", False)
        if user_t is not None:
            if given.get("template") is not None:
                raise ConfigError("give --template or --user-template, not both")
            given["template"] = Template.from_files(user=user_t, system=sys_t)
        elif sys_t is not None:
            raise ConfigError("--system-template needs --user-template too")
        if isinstance(given.get("extra_body"), str):
            where = f"{ENV_PREFIX}EXTRA_BODY" if "extra_body" in used else "--extra-body"
            try:
                given["extra_body"] = json.loads(given["extra_body"])
            except ValueError as exc:
                raise ConfigError(f"{where} is not JSON: {exc}") from None
            if not isinstance(given["extra_body"], dict):
                raise ConfigError(f"{where} must be a JSON object")
        urls = tuple(given.pop("base_url", None) or ())
        if len(urls) > 1 and not replicas:
            raise ConfigError(f"--base-url was given {len(urls)} times; this command talks to "
                              "one server (only `fliprm score --ray` takes one per replica)")
        runtime_fields = set(RuntimeOptions.model_fields)
        rt = {k: v for k, v in given.items() if k in runtime_fields and v is not None}
        rc = {k: v for k, v in given.items() if k not in runtime_fields}
        config = RewardConfig.preset(preset, **rc)
        runtime = make_config(RuntimeOptions, {**rt, "base_url": urls[0] if urls else None})
    except FlipError as exc:
        fail(name_env_vars(str(exc), used))
    path = None if no_cache else (cache or (_default_cache() if default_cache else None))
    return CliSettings(config, runtime, urls, path, cache is not None and not no_cache)


def _default_cache() -> Path | None:
    """``<cache dir>/responses.sqlite``, or None (one warning) where that folder cannot be
    made or written: the default cache is a convenience, never a reason for items to fail."""
    path = cache_dir() / "responses.sqlite"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        usable = os.access(path if path.exists() else path.parent, os.W_OK)
        problem = "not writable"
    except OSError as exc:
        usable, problem = False, exc.strerror or type(exc).__name__
    if not usable:
        err.print(f"[yellow]warning:[/yellow] cannot use the response cache in "
                  f"{escape(str(path.parent))} ({escape(problem)}); scoring without a response "
                  "cache (set FLIPRM_CACHE_DIR, or pass --cache PATH or --no-cache)")
        return None
    return path
