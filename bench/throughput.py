"""Throughput of fliprm against the reference path and against the hardware (GitHub issue 5).

One run, one embedded model (loaded once and shared by every configuration), the same items
for every configuration. For each configuration ("row") and data set it measures:

* items/s (an item = one IFBench pair or one best-of-4 group) and the speed-up over the
  reference row;
* prompt / cached-prompt / output tokens per item and backend calls;
* parse failures and errors;
* accuracy with a 95% bootstrap CI, and the *paired* difference to the reference row (same
  items, so the per-item difference is the honest comparison);
* the hardware bound: the sum of llama.cpp's own ``timings`` (prefill + decode) over the same
  calls, and the overhead ratio wall / backend time, split into the runtime's share (time in
  the xllamacpp call outside llama.cpp's timings: tokenising, grammar set-up, JSON) and
  fliprm's own share (everything outside the runtime call);
* peak RSS so far, and the cold start (model verify + load) once per run.

Accuracy: IFBench pairs score the response against its own prompt and the next row's prompt;
best-of-4 sets score four responses against the prompt. Both use the RewardBench-2 tie rule
(strictly highest = 1, k-way tie at the top including the good one = 1/k), so a tied IFBench
pair counts 1/2.

Rows run one after another over all items of a set (row-major), so two rows never score the same
response back to back: llama.cpp's prompt cache (prefix reuse) can then only carry the shared
system prompt from one call to the next, as it would in real use. ``cached_tok/item`` shows it.

Usage::

    python bench/throughput.py --sets ifbench,focus4 --limit 20 --json /work/runs/bench/out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from _common import load_average, peak_rss_mb, print_table
from sets import BenchItem, load_set

from fliprm import Completion, FlipResult, FlipReward, GenerateRequest, ResponseCache
from fliprm.eval.rb2_scoring import item_credit
from fliprm.eval.stats import bootstrap_ci, md_table, paired_diff
from fliprm.judges import top_indices

#: row name -> (FlipReward keyword arguments, how it runs). "sequential" = the reference's
#: one-call-at-a-time loop; "batch" = fliprm's ascore over the whole set.
#: The rows name their method and guard: since 2026-12-06 the library default (``default``) is
#: pmi with the echo guard, and the rows must keep measuring what they measured on 2026-11-22.
_F1 = {"method": "f1", "mask_echo": False}
SHORT: dict[str, Any] = {**_F1, "template": "flip-short", "constrained": True, "max_tokens": 64}
ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "reference": (
        {**_F1, "template": "flip", "constrained": False, "parse_failure": "raw",
         "max_tokens": 512},
        "sequential",
    ),
    "default": ({}, "batch"),
    "short64": (SHORT, "batch"),
    "short64-t600": ({**SHORT, "max_response_chars": 600}, "batch"),
    "short64-t1200": ({**SHORT, "max_response_chars": 1200}, "batch"),
    "short64-t2400": ({**SHORT, "max_response_chars": 2400}, "batch"),
    "likelihood": ({"method": "likelihood", "mask_echo": False}, "batch"),
    "likelihood-t1200": ({"method": "likelihood", "mask_echo": False,
                          "max_response_chars": 1200}, "batch"),
    # second pass of the short64 configuration over a response cache it filled (see run_set)
    "cache-warm": (SHORT, "batch"),
}
DEFAULT_ROWS = list(ROWS)


class RecordingBackend:
    """Delegates to the shared backend and records every real call's :class:`Completion`.

    Each row gets its own recorder, so per-row token counts and llama.cpp timings come from
    exactly that row's calls. ``aclose`` is a no-op: a row's FlipReward must not unload the
    model that the other rows share.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.completions: list[Completion] = []

    def __getattr__(self, name: str) -> Any:
        # everything else of the Backend protocol (name, capabilities, cache_identity, ...)
        # is the shared backend's own, so the protocol can grow without this wrapper
        return getattr(self.inner, name)

    async def generate(self, request: GenerateRequest) -> Completion:
        comp = await self.inner.generate(request)
        self.completions.append(comp)
        return comp

    async def aclose(self) -> None:
        return None


@dataclass
class RowResult:
    row: str
    set: str
    n_items: int
    n_pairs: int
    wall_s: float
    calls: int
    backend_s: float
    runtime_s: float
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    parse_failures: int
    errors: int
    truncated: int
    served_from_cache: int
    ties: int
    scores: list[float]
    rss_mb: float
    load_avg: str
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.n_items / self.wall_s if self.wall_s > 0 else math.inf

    @property
    def accuracy(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else math.nan

    def to_dict(self) -> dict[str, Any]:
        lo, hi = bootstrap_ci([self.scores])
        d = {k: v for k, v in self.__dict__.items()}
        d.update(
            items_per_s=self.items_per_s,
            accuracy=self.accuracy,
            accuracy_ci95=[lo, hi],
            overhead_ratio=(self.wall_s / self.backend_s) if self.backend_s else None,
        )
        return d


async def _score_reference(make: Callable[[], FlipReward],
                           items: list[BenchItem]) -> list[FlipResult]:
    """The reference path: one call at a time, no batching, no cache across items.

    The F1 standalone call does not see the instruction, so within one item a response that is
    scored against two instructions (an IFBench pair) needs one call; the second instruction is
    scored on the same completion (served by the item's own in-memory cache, ``cached``). The
    reference code would call twice; crediting it with one call makes every speed-up below
    conservative.
    """
    out: list[FlipResult] = []
    for it in items:
        rm = make()  # a fresh cache per item: nothing carries over to the next item
        try:
            for x, y in it.pairs:
                out.append(await rm.ascore_one(x, y))
        finally:
            await rm.aclose()
    return out


async def run_row(
    name: str, backend: Any, items: list[BenchItem], cache_path: Path | None
) -> RowResult:
    """Score every pair of ``items`` with configuration ``name`` and measure it."""
    kwargs, mode = ROWS[name]
    rec = RecordingBackend(backend)
    cache = str(cache_path) if cache_path is not None else None
    rm = FlipReward(rec, cache=cache, **kwargs)
    instrs = [x for it in items for x, _ in it.pairs]
    resps = [y for it in items for _, y in it.pairs]
    t0 = time.perf_counter()
    if mode == "sequential":
        results = await _score_reference(
            lambda: FlipReward(rec, cache=ResponseCache(":memory:"), **kwargs), items)
    else:
        results = await rm.ascore(instrs, resps)
    wall = time.perf_counter() - t0
    await rm.aclose()  # closes the row's cache only (RecordingBackend.aclose is a no-op)

    scores: list[float] = []
    ties = 0
    k = 0
    for it in items:
        rewards = [results[k + j].reward for j in it.group]
        k += len(it.pairs)
        top = top_indices(rewards)
        ties += len(top) > 1
        scores.append(item_credit(top))  # the RewardBench 2 tie rule
    comps = rec.completions
    errors = [r for r in results if r.error]
    return RowResult(
        row=name,
        set=items[0].set if items else "",
        n_items=len(items),
        n_pairs=len(instrs),
        wall_s=wall,
        calls=len(comps),
        backend_s=sum(c.backend_s or 0.0 for c in comps),
        runtime_s=sum(c.latency_s for c in comps),
        prompt_tokens=sum(c.prompt_tokens for c in comps),
        cached_prompt_tokens=sum(c.cached_prompt_tokens or 0 for c in comps),
        completion_tokens=sum(c.completion_tokens for c in comps),
        parse_failures=sum(
            1 for r in results if r.method == "f1" and not r.parse_ok and not r.error
        ),
        errors=len(errors),
        truncated=sum(1 for r in results if r.truncated),
        served_from_cache=sum(1 for r in results if r.cached),
        ties=ties,
        scores=scores,
        rss_mb=peak_rss_mb(),
        load_avg=load_average(),
        first_error=errors[0].error if errors else None,
    )


async def run_set(
    set_name: str,
    items: list[BenchItem],
    rows: list[str],
    backend: Any,
    workdir: Path,
    report: dict[str, Any],
    json_out: Path | None,
) -> list[RowResult]:
    """Run ``rows`` over ``items`` one row at a time; save the JSON after every row."""
    cache_path = workdir / f"cache-{set_name}.sqlite"
    out: list[RowResult] = []
    for name in rows:
        use_cache = None
        if name == "short64":
            use_cache = cache_path  # fills the cache; "cache-warm" is its second pass
        elif name == "cache-warm":
            if "short64" not in rows:  # nothing filled it: fill it now, untimed
                print(f"[{set_name}] cache-warm: filling the cache first (untimed)", flush=True)
                await run_row("short64", backend, items, cache_path)
            use_cache = cache_path
        print(f"[{set_name}] {name}: {len(items)} items ... (load {load_average()})", flush=True)
        res = await run_row(name, backend, items, use_cache)
        out.append(res)
        print(
            f"[{set_name}] {name}: {res.items_per_s:.3f} items/s, acc {res.accuracy:.3f}, "
            f"calls {res.calls}, wall {res.wall_s:.1f}s, backend {res.backend_s:.1f}s",
            flush=True,
        )
        report["sets"].setdefault(set_name, {"n_items": len(items), "rows": {}})
        report["sets"][set_name]["rows"][name] = res.to_dict()
        if json_out is not None:
            _save(report, json_out)
    return out


def _save(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)


def _fmt_ci(scores: list[float]) -> str:
    lo, hi = bootstrap_ci([scores])
    return f"{sum(scores) / len(scores):.3f} [{lo:.2f},{hi:.2f}]" if scores else "-"


def _cost_model_s(r: RowResult) -> float:
    """Seconds the row's calls would take on an idle 2-core CPU, from token counts alone.

    The shared docs' cost model (prefill ~115 tok/s for uncached prompt tokens, decode ~30
    tok/s). Other engineers' jobs load this machine unevenly over a run, so wall-clock rows far
    apart in time are not comparable; token counts are. It underestimates grammar-forced
    decoding (the likelihood rows), whose per-token cost is higher than free decoding.
    """
    return (r.prompt_tokens - r.cached_prompt_tokens) / 115 + r.completion_tokens / 30


def table_rows(results: list[RowResult]) -> list[list[str]]:
    """One printable line per (set, row), with speed-up and paired accuracy delta vs reference."""
    refs = {r.set: r for r in results if r.row == "reference"}
    lines = []
    for r in results:
        ref = refs.get(r.set)
        n = max(r.n_items, 1)
        speed = f"{r.items_per_s / ref.items_per_s:.2f}x" if ref and ref.items_per_s else "-"
        if ref and r is not ref and len(ref.scores) == len(r.scores):
            d, lo, hi = paired_diff(r.scores, ref.scores)
            delta = f"{d:+.3f} [{lo:+.2f},{hi:+.2f}]"
        else:
            delta = "-"
        if r.backend_s > 0:
            ovh = f"{100 * (r.wall_s / r.backend_s - 1):.1f}%"
            own = f"{100 * (r.wall_s - r.runtime_s) / r.backend_s:.1f}%"
        else:
            ovh = own = "-"
        lines.append(
            [
                r.set,
                r.row,
                str(r.n_items),
                f"{r.items_per_s:.3f}" if r.items_per_s < 100 else f"{r.items_per_s:.0f}",
                speed,
                f"{r.prompt_tokens / n:.0f}",
                f"{r.cached_prompt_tokens / n:.0f}",
                f"{r.completion_tokens / n:.0f}",
                f"{_cost_model_s(r) / n:.1f}",
                str(r.calls),
                str(r.parse_failures + r.errors),
                f"{r.truncated}",
                _fmt_ci(r.scores),
                delta,
                f"{r.ties}",
                ovh,
                own,
                f"{r.rss_mb:.0f}",
            ]
        )
    return lines


COLUMNS = [
    "set",
    "row",
    "n",
    "items/s",
    "vs ref",
    "prompt tok/item",
    "cached tok/item",
    "out tok/item",
    "idle-CPU est. s/item",
    "calls",
    "parse fail+err",
    "truncated",
    "acc [95% CI]",
    "Δacc vs ref (paired) [95% CI]",
    "ties",
    "overhead (wall/backend-1)",
    "fliprm own",
    "peak RSS MB",
]


async def main_async(args: argparse.Namespace) -> int:
    from fliprm.backends.embedded import EmbeddedBackend

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    limits = _limits(args.limit, sets)
    json_out = Path(args.json) if args.json else None

    report: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_avg_start": load_average(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "rss_mb_before_model": peak_rss_mb(),
        "sets": {},
    }
    t0 = time.perf_counter()
    backend = EmbeddedBackend(n_ctx=args.n_ctx)
    backend.start()
    report["cold_start_s"] = time.perf_counter() - t0  # sha256 verify + load
    report["model_load_s"] = backend.load_s
    report["n_threads"] = backend.n_threads
    report["model"] = backend.model_id
    # first call on a loaded model (graph set-up, page faults): not part of any row
    t1 = time.perf_counter()
    rm = FlipReward(RecordingBackend(backend), template="flip-short", max_tokens=8)
    await rm.ascore_one("Say hi.", "Hi!")
    report["first_call_s"] = time.perf_counter() - t1
    print(
        f"model ready: cold start {report['cold_start_s']:.2f}s, first call "
        f"{report['first_call_s']:.2f}s, load {report['load_avg_start']}",
        flush=True,
    )

    all_results: list[RowResult] = []
    with tempfile.TemporaryDirectory(prefix="fliprm-bench-") as tmp:
        for s in sets:
            items = load_set(s, limits[s])
            all_results += await run_set(s, items, rows, backend, Path(tmp), report, json_out)
    backend.close()
    report["load_avg_end"] = load_average()
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["peak_rss_mb"] = peak_rss_mb()
    report["table"] = {"columns": COLUMNS, "rows": table_rows(all_results)}
    if json_out is not None:
        _save(report, json_out)
    print_table(
        f"fliprm throughput (cold start {report['cold_start_s']:.2f}s, peak RSS "
        f"{report['peak_rss_mb']:.0f} MB, load avg start {report['load_avg_start']} / end "
        f"{report['load_avg_end']})",
        COLUMNS,
        table_rows(all_results),
    )
    return 0


def _limits(spec: str | None, sets: list[str]) -> dict[str, int | None]:
    """``--limit 20`` for every set, or ``--limit ifbench=40,focus4=10``."""
    if not spec:
        return {s: None for s in sets}
    if "=" not in spec:
        return {s: int(spec) for s in sets}
    out: dict[str, int | None] = {s: None for s in sets}
    for part in spec.split(","):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sets", default="ifbench,focus4,pref4", help="comma-separated: ifbench, focus4, pref4"
    )
    p.add_argument(
        "--limit",
        default=None,
        help="items per set: N for all, or per set like ifbench=40,focus4=10",
    )
    p.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated configurations: {', '.join(ROWS)}",
    )
    p.add_argument("--json", default=None, help="write the full report (per-item scores too) here")
    p.add_argument("--n-ctx", type=int, default=8192, help="model context window")
    p.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="do not run: print one table from the JSON files of earlier runs",
    )
    p.add_argument("--markdown", action="store_true", help="with --report: also a Markdown table")
    args = p.parse_args(argv)
    if args.report:
        return report_from_json([Path(f) for f in args.report], markdown=args.markdown)
    return asyncio.run(main_async(args))


def report_from_json(paths: list[Path], markdown: bool = False) -> int:
    """Re-print the table of one or more saved runs (e.g. sets run as separate processes)."""
    names = {f.name for f in fields(RowResult)}
    results: list[RowResult] = []
    for path in paths:
        rep = json.loads(path.read_text())
        print(
            f"{path}: {rep['command']}\n  started {rep['started']} (load {rep['load_avg_start']}), "
            f"finished {rep.get('finished', '(incomplete)')} (load {rep.get('load_avg_end', '?')}), "
            f"cold start {rep['cold_start_s']:.2f}s, first call {rep['first_call_s']:.2f}s"
        )
        for s in rep["sets"].values():
            for d in s["rows"].values():
                results.append(RowResult(**{k: v for k, v in d.items() if k in names}))
    rows = table_rows(results)
    print_table("fliprm throughput", COLUMNS, rows)
    if markdown:
        print(md_table(COLUMNS, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
