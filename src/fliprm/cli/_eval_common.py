"""What ``fliprm eval`` and ``fliprm rerank`` share: the method list and the judges it names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..backends import Backend, build_backend
from ..errors import ConfigError
from ..judges import JUDGES, Judge, LongestJudge

MethodsOpt = Annotated[str, typer.Option(
    "--methods", help=f"comma list of {','.join(JUDGES)} (flip = backward inference + word F1; "
    "flip-likelihood = mean log p(instruction | response); flip-pmi = the same minus log p("
    "instruction | empty response))")]

SplitOpt = Annotated[str | None, typer.Option(
    "--split", help="Hugging Face dataset split, for a hub name or a save_to_disk folder")]
HfConfigOpt = Annotated[str | None, typer.Option(
    "--config", help="Hugging Face dataset configuration (subset), for a hub name")]

#: flags the judges take from the shared reward definition; --method is --methods' job here
EXCLUDE = ("method",)


def parse_methods(methods: str) -> list[str]:
    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in JUDGES]
    if bad or not names:
        raise ConfigError(f"unknown method(s) {', '.join(bad) or '(none)'}; "
                          f"choose from {', '.join(JUDGES)}")
    return list(dict.fromkeys(names))


def judges_for(settings: Any, names: list[str]) -> tuple[Backend | None, Callable[[str, int], Judge]]:
    """The backend (None when only ``longest`` runs: no model needed) and ``make(method, seed)``."""
    from ..eval._common import judge_factory

    if not set(names) - {"longest"}:
        return None, lambda method, seed: LongestJudge(seed=seed)
    backend = build_backend(settings.config, settings.runtime)
    return backend, judge_factory(backend, settings.config)
