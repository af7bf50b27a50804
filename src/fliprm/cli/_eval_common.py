"""What ``fliprm eval rewardbench2`` and ``fliprm rerank`` share: their options, the method list
and the judges it names, and the failure report. The two commands import this module whole
(``from . import _eval_common as common``), so the shared vocabulary is written once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..backends import build_backend
from ..engine import Engine
from ..errors import ConfigError
from ..judges import JUDGES, Judge, LongestJudge
from ..registry import method_specs
from ._config_options import err, reward_options

MethodsOpt = Annotated[str, typer.Option(
    "--methods", help=f"comma list of {','.join(JUDGES)} ("
    + "; ".join(f"{s.judge} = {s.help}" for s in method_specs() if s.help) + ")")]

#: the judge that scores with the library's default reward (``RewardConfig()``: pmi + echo guard);
#: ``eval`` and ``rerank`` start from it like every other entry point (tests check it matches)
DEFAULT_JUDGE = "flip-pmi"

SplitOpt = Annotated[str | None, typer.Option(
    "--split", help="Hugging Face dataset split, for a hub name or a save_to_disk folder")]
HfConfigOpt = Annotated[str | None, typer.Option(
    "--config", help="Hugging Face dataset configuration (subset), for a hub name")]

#: flags the judges take from the shared reward definition; --method is --methods' job here
EXCLUDE = ("method",)

RetryErrorsOpt = Annotated[bool, typer.Option(
    "--retry-errors", help="redo the records whose judge calls failed in an earlier run")]


def judged_run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a judged-run command with the reward flags (:func:`reward_options`, preset
    ``default``, without ``--method``), passed as ``settings``.

    >>> @judged_run_options
    ... def run(settings, methods: MethodsOpt = "flip") -> None: ...
    """
    # no default cache: a rerun served from a cache would report near-zero seconds per item
    return reward_options(preset="default", exclude=EXCLUDE, default_cache=False)(fn)


def report_failures(records: list[dict[str, Any]]) -> int:
    """Print how many records failed (judge calls that errored) and the first errors; return
    the count. The caller exits 1 when it is not 0, as ``fliprm score`` does."""
    failed = [r for r in records if r.get("error")]
    if failed:
        by_method: dict[str, int] = {}
        for r in failed:
            by_method[r.get("method", "?")] = by_method.get(r.get("method", "?"), 0) + 1
        counts = ", ".join(f"{m}: {k} failed" for m, k in by_method.items())
        # records written before error_kind existed count as "unknown"
        by_kind = Counter(str(r.get("error_kind") or "unknown") for r in failed)
        kinds = ", ".join(f"{n} {k}" for k, n in by_kind.most_common())
        err.print(f"[red]error:[/red] {len(failed)} of {len(records)} records have failed judge "
                  f"calls and no verdict ({escape(counts)}; {kinds})", soft_wrap=True)
        for r in failed[:3]:
            err.print(f"[red]error:[/red] {escape(str(r.get('id')))}: {escape(str(r['error']))}",
                      soft_wrap=True)
        err.print("rerun with --retry-errors to redo the failed records")
    return len(failed)


def parse_methods(methods: str) -> list[str]:
    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in JUDGES]
    if bad or not names:
        raise ConfigError(f"unknown method(s) {', '.join(bad) or '(none)'}; "
                          f"choose from {', '.join(JUDGES)}")
    return list(dict.fromkeys(names))


def judges_for(settings: Any, names: list[str]) -> tuple[Engine | None, Callable[[str, int], Judge]]:
    """The Engine the judges share (None when only ``longest`` runs: no model needed) and
    ``make(method, seed)``. The Engine takes --max-retries, --total-timeout, --concurrency and
    --cache from ``settings``, as ``fliprm score``'s does; the caller closes it."""
    from ..eval._common import judge_factory

    if not set(names) - {"longest"}:
        return None, lambda method, seed: LongestJudge(seed=seed)
    backend = build_backend(settings.config, settings.runtime)
    make = judge_factory(backend, settings.config, runtime=settings.runtime, cache=settings.cache)
    return make.engine, make
