"""IFBench pairs: is the reward of a response higher for its own prompt than for the next row's?

    python bench/ifbench_pairs.py --limit 50 [--template flip] [--json out.json]

Prints: pairwise accuracy (reward(true prompt) > reward(next row's prompt), ties count as
failures) with a Wilson 95% CI, parse-failure rate, items/s, tokens per item, peak RSS.
The standalone FLIP call sees only the response, so the mismatched score reuses the same
inferred instruction: one model call per pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import peak_rss_mb, wilson_ci
from rich.console import Console
from rich.table import Table
from sets import data_path, read_jsonl

from fliprm import FlipReward, f1_score


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None,
                    help="prompt/response JSONL (default: the ifbench set, bench/sets.py)")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--template", default=None)
    ap.add_argument("--method", default="f1")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--no-constrained", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    path = Path(args.data) if args.data else data_path("ifbench")
    rows = read_jsonl(path)[: args.limit + 1]
    n = min(args.limit, len(rows) - 1)
    rm = FlipReward(template=args.template, method=args.method, max_tokens=args.max_tokens,
                    constrained=not args.no_constrained)
    t_load = time.perf_counter()
    rm.backend.start()  # type: ignore[attr-defined]
    load_s = time.perf_counter() - t_load
    t0 = time.perf_counter()
    own = rm.score([r["prompt"] for r in rows[:n]], [r["response"] for r in rows[:n]])
    if args.method == "f1":
        other = [f1_score(r.inferred_instruction or r.raw_output or "", rows[i + 1]["prompt"]).f1
                 for i, r in enumerate(own)]
    else:
        other = [r.reward or 0.0 for r in rm.score([r["prompt"] for r in rows[1 : n + 1]],
                                                   [r["response"] for r in rows[:n]])]
    elapsed = time.perf_counter() - t0
    wins = sum((o.reward or 0.0) > m for o, m in zip(own, other))
    lo, hi = wilson_ci(wins, n)
    pf = sum(not r.parse_ok for r in own)
    errors = sum(r.error is not None for r in own)
    backend_s = sum(r.latency_s for r in own)
    rss_mb = peak_rss_mb()
    out = {
        "items": n, "accuracy": wins / n, "ci95": [lo, hi], "parse_failure_rate": pf / n,
        "errors": errors, "items_per_s": n / elapsed, "seconds_per_item": elapsed / n,
        "prompt_tokens_per_item": sum(r.prompt_tokens for r in own) / n,
        "output_tokens_per_item": sum(r.completion_tokens for r in own) / n,
        "peak_rss_mb": rss_mb, "model_load_s": load_s, "template": rm.template.name,
        "method": args.method, "call_time_s": backend_s,
    }
    t = Table(title=f"IFBench pairs: own prompt vs next row's ({n} pairs)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("accuracy (own > mismatched)", f"{wins}/{n} = {wins / n:.3f}  [{lo:.3f}, {hi:.3f}]")
    t.add_row("parse failures", f"{pf}/{n} = {pf / n:.3f}")
    t.add_row("errors", str(errors))
    t.add_row("items/s", f"{n / elapsed:.3f}  ({elapsed / n:.2f} s/item)")
    t.add_row("prompt / output tokens per item",
              f"{out['prompt_tokens_per_item']:.0f} / {out['output_tokens_per_item']:.0f}")
    t.add_row("peak RSS", f"{rss_mb:.0f} MB")
    t.add_row("model load", f"{load_s:.1f} s")
    Console().print(t)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    rm.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
