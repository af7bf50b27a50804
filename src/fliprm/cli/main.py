"""``fliprm``: score, demo, doctor, eval, rerank, serve."""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

import typer

app = typer.Typer(
    name="fliprm",
    help="FLIP reward models: score a response by inferring the instruction behind it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each subcommand module registers itself on `app`; importing them lazily keeps `fliprm --help`
# fast and keeps optional extras (fastapi, matplotlib) out of the commands that do not need them.
_SUBCOMMANDS = ["score", "demo", "doctor", "eval", "rerank", "serve"]


def _register() -> None:
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"fliprm.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fliprm.cli.{name}":
                continue  # not built yet
            raise
        module.register(app)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"fliprm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """FLIP reward models: score a response by inferring the instruction behind it."""


def _load_plugins() -> None:
    """Registered methods and backends, plugins included (``FLIPRM_PLUGINS``, entry points),
    before the commands read them for their flags; a plugin that fails is a one-line error."""
    from ..errors import ConfigError
    from ..registry import method_specs

    try:
        method_specs()
    except ConfigError as exc:
        from ._config_options import fail

        try:
            fail(str(exc))
        except typer.Exit as stop:
            raise SystemExit(stop.exit_code) from None


def _one_line(default: Any) -> Any:
    def fmt(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        if str(message).startswith("FLIPRM_"):  # ours: what to set, not where in fliprm
            return f"warning: {message}\n"
        return default(message, category, *args, **kwargs)

    return fmt


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Python hides DeprecationWarnings outside __main__; a user of the CLI must see this one,
    # as one line
    warnings.filterwarnings("default", message="FLIPRM_API_KEY is deprecated",
                            category=DeprecationWarning)
    warnings.formatwarning = _one_line(warnings.formatwarning)
    _load_plugins()
    _register()
    app()


if __name__ == "__main__":
    main()
