"""Registries of scoring methods and LM backends: each name owns what it can do and how to build it.

A method (``--method NAME``) or a backend (``-b NAME[:ARG]``) is one registration; the config
validation, the CLI's choices and help, the ``flip-<method>`` judges, the backend construction
and the fingerprint read it from here. Built-ins register the same way as a plugin does:
:mod:`fliprm.methods` decorates its classes, :mod:`fliprm.backends` registers lazy factories.

A plugin is a module that registers on import, found through the ``fliprm.methods`` /
``fliprm.backends`` entry-point groups of installed packages or named in ``FLIPRM_PLUGINS``
(comma list of ``module`` or ``module:function``; the function is called with no arguments
after the import). Both are loaded at the first lookup, so the library, the CLI, the server and
the RL adapters see the same names.

>>> method_spec("pmi").needs_logprobs, method_spec("f1").judge
(True, 'flip')
>>> backend_spec("gguf").local, backend_spec("openai").arg
(True, 'model')
>>> method_spec("nope")
Traceback (most recent call last):
...
fliprm.errors.ConfigError: unknown method 'nope'; registered: f1, likelihood, pmi, pmi-min
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .backends import Backend
    from .config import RewardConfig, RuntimeOptions

__all__ = [
    "ENTRY_POINT_GROUPS",
    "PLUGINS_ENV",
    "BackendSpec",
    "MethodSpec",
    "backend_names",
    "backend_spec",
    "backend_specs",
    "backend_usage",
    "backends_help",
    "find_backend",
    "load_plugins",
    "method_names",
    "method_spec",
    "method_specs",
    "methods_help",
    "register_backend",
    "register_method",
    "unregister_backend",
    "unregister_method",
]

log = logging.getLogger(__name__)

#: env var naming plugin modules to import (comma list of ``module`` or ``module:function``)
PLUGINS_ENV = "FLIPRM_PLUGINS"
#: entry-point groups whose entries are loaded like ``FLIPRM_PLUGINS`` entries
ENTRY_POINT_GROUPS = ("fliprm.methods", "fliprm.backends")
#: modules whose import registers the built-ins (lazy: the registry imports them on first use)
_BUILTINS = ("fliprm.methods", "fliprm.backends")

T = TypeVar("T")


@dataclass(frozen=True)
class MethodSpec:
    """A registered scoring method.

    ``factory(config)`` builds the strategy object (see :class:`fliprm.methods.Method`).
    ``needs_logprobs``: it scores the instruction's token log-probabilities (teacher forcing),
    so a backend that cannot give them is refused at start. ``supports_samples``: it takes
    ``samples > 1``. ``generates``: it generates text (``max_tokens``, ``constrained`` apply).
    ``judge``: its name as an ``fliprm eval`` / ``rerank`` judge.
    """

    name: str
    factory: Callable[[RewardConfig], Any]
    needs_logprobs: bool
    supports_samples: bool
    generates: bool
    help: str
    judge: str


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend, named by the part of a spec before ``:``.

    ``factory(**options)`` builds it: a callable or a lazy ``"module:attr"`` (imported on the
    first build, so optional dependencies load only when used). ``arg``: the constructor
    keyword that the spec's ``:ARG`` fills (``openai:MODEL`` -> ``model``), ``arg_required``
    the one-line hint when it must be given. ``options(config, runtime)`` maps the reward and
    runtime settings to constructor keywords. The ``supports_*`` flags say what the backend
    can do at best; a built instance's own attributes are authoritative (an HTTP server that
    turns out to be Ollama gives no log-probabilities). ``usage``: the ways the spec is written
    (``("openai[:MODEL]",)``), for help texts and errors.
    """

    name: str
    factory: Callable[..., Backend] | str
    local: bool = False
    supports_json_schema: bool = True
    supports_forced_decoding: bool = False
    supports_prompt_logprobs: bool = False
    options: Callable[[RewardConfig, RuntimeOptions], dict[str, Any]] | None = None
    arg: str | None = None
    arg_required: str | None = None
    usage: tuple[str, ...] = ()
    help: str = ""

    def build(self, arg: str = "", **options: Any) -> Backend:
        """The backend, ``arg`` being the spec's text after ``:``; explicit options win."""
        if self.arg_required and not arg:
            raise ConfigError(self.arg_required)
        if arg and self.arg:
            options.setdefault(self.arg, arg)
        return _resolve(self.factory)(**options)

    def constructor_options(self, config: RewardConfig, runtime: RuntimeOptions) -> dict[str, Any]:
        """The constructor keywords ``config`` and ``runtime`` imply for this backend."""
        return dict(self.options(config, runtime)) if self.options else {}


_methods: dict[str, MethodSpec] = {}
_backends: dict[str, BackendSpec] = {}
_lock = threading.RLock()
_ready = False
_loading = False


def _qualname(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _check_name(kind: str, name: str) -> None:
    if not name or ":" in name or "," in name or name != name.strip():
        raise ConfigError(f"{kind} name {name!r}: must be non-empty, without ':', ',' or "
                          "surrounding spaces")


def _add(table: dict[str, Any], kind: str, spec: Any) -> None:
    with _lock:
        old = table.get(spec.name)
        # the same definition again (a module imported twice, a reload) replaces it; another
        # definition under a taken name is an error, never a silent swap of what a name scores
        if old is not None and _qualname(old.factory) != _qualname(spec.factory):
            raise ConfigError(f"{kind} {spec.name!r} is already registered by "
                              f"{_qualname(old.factory)}")
        table[spec.name] = spec


def register_method(
    name: str, *, needs_logprobs: bool, supports_samples: bool = False,
    generates: bool | None = None, help: str = "", judge: str | None = None,
) -> Callable[[T], T]:
    """Class decorator: register a scoring method under ``name``.

    The class is built as ``cls(config)`` and has an ``async run(runner, item) -> FlipResult``
    (:class:`fliprm.methods.Method`). ``generates`` defaults to ``not needs_logprobs``;
    ``judge`` to ``flip-<name>``.

    >>> @register_method("halves", needs_logprobs=False, help="0.5 for every item")
    ... class Halves:
    ...     def __init__(self, config): self.config = config
    >>> method_spec("halves").judge
    'flip-halves'
    >>> unregister_method("halves")
    """
    _check_name("method", name)

    def deco(cls: T) -> T:
        _add(_methods, "method", MethodSpec(
            name=name, factory=cls, needs_logprobs=needs_logprobs,  # type: ignore[arg-type]
            supports_samples=supports_samples,
            generates=(not needs_logprobs) if generates is None else generates,
            help=help, judge=judge or f"flip-{name}"))
        return cls

    return deco


def register_backend(
    name: str, *, factory: Callable[..., Backend] | str, local: bool = False,
    supports_json_schema: bool = True, supports_forced_decoding: bool = False,
    supports_prompt_logprobs: bool = False,
    options: Callable[[RewardConfig, RuntimeOptions], dict[str, Any]] | None = None,
    arg: str | None = None, arg_required: str | None = None,
    usage: str | tuple[str, ...] | None = None, help: str = "",
) -> BackendSpec:
    """Register a backend under ``name`` (the spec's part before ``:``); see :class:`BackendSpec`.

    >>> spec = register_backend("echo", factory="fliprm.backends.fake:FakeBackend",
    ...                         supports_forced_decoding=True)
    >>> spec.build().name, spec.usage
    ('fake', ('echo',))
    >>> unregister_backend("echo")
    """
    _check_name("backend", name)
    spec = BackendSpec(name=name, factory=factory, local=local,
                       supports_json_schema=supports_json_schema,
                       supports_forced_decoding=supports_forced_decoding,
                       supports_prompt_logprobs=supports_prompt_logprobs, options=options,
                       arg=arg, arg_required=arg_required,
                       usage=(usage,) if isinstance(usage, str) else (usage or (name,)),
                       help=help)
    _add(_backends, "backend", spec)
    return spec


def unregister_method(name: str) -> None:
    """Forget a method (tests, plugins that replace one); unknown names are ignored."""
    with _lock:
        _methods.pop(name, None)


def unregister_backend(name: str) -> None:
    """Forget a backend (tests, plugins that replace one); unknown names are ignored."""
    with _lock:
        _backends.pop(name, None)


def _ensure_loaded() -> None:
    global _ready, _loading
    if _ready:
        return
    # other threads wait here until the tables are whole; the loading thread itself comes back
    # in (RLock) when a module it imports looks a name up, and sees what is registered so far
    with _lock:
        if _ready or _loading:
            return
        _loading = True
        try:
            for module in _BUILTINS:
                importlib.import_module(module)
            _load_entry_points()
            load_plugins(os.environ.get(PLUGINS_ENV, ""), source=PLUGINS_ENV)
            _ready = True
        finally:
            _loading = False


def _load_entry_points() -> None:
    for group in ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            try:
                _load_one(ep.value)
            except Exception as exc:  # noqa: BLE001 - a broken installed plugin must not stop fliprm
                log.warning("fliprm plugin %s (entry point %s) failed to load: %s: %s",
                            ep.value, group, type(exc).__name__, exc)


def load_plugins(names: str, *, source: str = "plugins") -> None:
    """Import each plugin of a comma list of ``module`` or ``module:function`` (the function is
    then called with no arguments); a plugin that fails is a one-line :class:`ConfigError`.

    >>> load_plugins("fliprm.methods")  # already imported: nothing new
    """
    for ref in (r.strip() for r in names.split(",")):
        if not ref:
            continue
        try:
            _load_one(ref)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any import-time failure is the plugin's, named
            raise ConfigError(f"{source}: cannot load plugin {ref!r}: "
                              f"{type(exc).__name__}: {exc}") from None


def _load_one(ref: str) -> None:
    module, _, func = ref.partition(":")
    mod = importlib.import_module(module.strip())
    if func:
        getattr(mod, func.strip())()


def _resolve(factory: Callable[..., T] | str) -> Callable[..., T]:
    if not isinstance(factory, str):
        return factory
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def method_specs() -> list[MethodSpec]:
    """Every registered method, in registration order (built-ins first)."""
    _ensure_loaded()
    return list(_methods.values())


def backend_specs() -> list[BackendSpec]:
    """Every registered backend, in registration order (built-ins first)."""
    _ensure_loaded()
    return list(_backends.values())


def method_names() -> list[str]:
    """Registered method names, sorted.

    >>> method_names()
    ['f1', 'likelihood', 'pmi', 'pmi-min']
    """
    return sorted(s.name for s in method_specs())


def backend_names() -> list[str]:
    """Registered backend names, in registration order.

    >>> backend_names()
    ['embedded', 'gguf', 'openai', 'fake']
    """
    return [s.name for s in backend_specs()]


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``; a one-line :class:`ConfigError` naming the others."""
    _ensure_loaded()
    try:
        return _methods[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; registered: "
                          f"{', '.join(method_names())}") from None


def backend_spec(name: str) -> BackendSpec:
    """The registered backend ``name`` (a spec's part before ``:``)."""
    _ensure_loaded()
    try:
        return _backends[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; use {backend_usage()}") from None


def find_backend(name: str) -> BackendSpec | None:
    """The registered backend ``name``, or None."""
    _ensure_loaded()
    return _backends.get(name)


def backend_usage() -> str:
    """How the registered backends are written, for errors and help.

    >>> backend_usage()
    'embedded, embedded:NAME, gguf:PATH, openai[:MODEL] or fake'
    """
    usages = [u for s in backend_specs() for u in s.usage]
    return usages[0] if len(usages) == 1 else f"{', '.join(usages[:-1])} or {usages[-1]}"


def backends_help() -> str:
    """Every backend spec, ``|``-separated, for the ``--backend`` help.

    >>> backends_help()
    'embedded | embedded:NAME | gguf:PATH | openai[:MODEL] | fake (scripted dry run)'
    """
    return " | ".join(" | ".join(s.usage) + (f" ({s.help})" if s.help else "")
                      for s in backend_specs())


def methods_help() -> str:
    """``name (help) | ...`` for every method, the default first (the ``--method`` help).

    >>> methods_help().split(" | ")[0].startswith("pmi (default")
    True
    """
    from .config import RewardConfig

    default = RewardConfig.model_fields["method"].default
    out = []
    for s in sorted(method_specs(), key=lambda s: s.name != default):
        text = f"default: {s.help}" if s.name == default and s.help else s.help
        out.append(f"{s.name} ({text})" if text else s.name)
    return " | ".join(out)
