"""Markdown, JSON and a PNG curve for a best-of-N reranking run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .best_of_n import summarize_bon
from .provenance import DRY_RUN, header_lines, settings_block
from .stats import bold_best, failed_note, fmt, md_table, strict_json

__all__ = ["write_bon_report"]


def _rank(x: float) -> float:
    return math.inf if x is None or math.isnan(x) else -x  # best first, NaN last


def _plot(s: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = s["sizes"]
    # the methods first, then random and oracle on top in grey/black with hollow markers and a
    # thicker dotted line: an oracle that equals a method's curve stays visible around it
    for name, m in s["methods"].items():  # best first, as in the table
        ys = s["curve"][name]
        line = ax.plot(sizes, ys, "-", marker="o", markersize=5, zorder=3,
                       label=f"{name} (n={m['n']})")[0]
        lo, hi = m["ci"]
        if lo is not None and hi is not None:  # the headline CI at the full pool
            ax.errorbar([sizes[-1]], [ys[-1]], yerr=[[ys[-1] - lo], [hi - ys[-1]]], fmt="none",
                        ecolor=line.get_color(), capsize=4, zorder=3)
    for name, style in (("random", {"color": "grey", "marker": "s"}),
                        ("oracle", {"color": "black", "marker": "^"})):
        ax.plot(sizes, s["curve"][name], ":", linewidth=2.2, markersize=10,
                markerfacecolor="none", markeredgewidth=1.5, zorder=5,
                label=f"{name} pick (n={s['n_rows']})", **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("N (a seeded random subset of N candidates per row)")
    ax.set_ylabel("mean label of the pick (95% CI at full N)")
    title = f"Best-of-N on {s.get('dataset') or 'the input'}"
    ax.set_title(title + (f"\n{DRY_RUN}" if s.get("dry_run") else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_bon_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, *, meta: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None, dataset: str | None = None,
) -> dict[str, Any]:
    """Write ``bon_report.md``, ``bon_results.json`` and ``bon_curve.png``; return the summary.

    ``run``: the provenance (:func:`~fliprm.eval.provenance.run_info`), shown at the top and
    kept under ``meta.run``; a fake-backend run is labelled a dry run on the first line.
    ``dataset`` names the input in the plot's title.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_bon(records)
    if not summary:
        return summary
    meta = dict(meta or {})
    if run:
        meta["run"] = run
    dry = bool(run and run.get("dry_run"))
    s: dict[str, Any] = {"dry_run": dry, **({"notice": DRY_RUN} if dry else {})}
    s.update(summary)
    s["methods"] = dict(sorted(s["methods"].items(), key=lambda kv: _rank(kv[1]["mean_label"])))
    s["meta"] = meta
    s["dataset"] = dataset
    lines = header_lines("Best-of-N reranking" + (f" on {dataset}" if dataset else ""), run, meta)
    n = s["sizes"][-1]
    names = list(s["methods"])
    best = bold_best([f"{s['methods'][m]['mean_label']:.3f}" for m in names],
                     [s["methods"][m]["mean_label"] for m in names])
    rows = [[m, f"{best[i]} [{v['ci'][0]:.3f}-{v['ci'][1]:.3f}]", v["n"], v.get("n_failed", 0),
             fmt(v["tie_rate"]), fmt(v["parse_failure_rate"]), f"{v['tokens_per_item']:.0f}",
             f"{v['seconds_per_item']:.1f}"] for i, (m, v) in enumerate(s["methods"].items())]
    rows += [["random pick", f"{s['curve']['random'][-1]:.3f}", s["n_rows"], "", "", "", "", ""],
             ["oracle", f"{s['curve']['oracle'][-1]:.3f}", s["n_rows"], "", "", "", "", ""]]
    curve_names = [*names, "random", "oracle"]
    lines += [(f"Mean label of the picked candidate out of N={n} (95% bootstrap CI), methods best "
               "first, the best method in bold; random pick and oracle are references. Ties at "
               "the top are broken by a seeded uniform choice. Rows: the scored rows; failed: "
               "rows whose judge calls failed, left out of the numbers."), "",
              md_table(["method", "mean label", "rows", "failed", "tie rate %", "parse failures %",
                        "tokens / row", "seconds / row"], rows), "",
              *failed_note({m: v.get("n_failed", 0) for m, v in s["methods"].items()}),
              "## Curve over N (pools: a seeded random subset of N candidates per row)", "",
              md_table(["pick", *(f"N={k}" for k in s["sizes"])],
                       [[name, *(f"{y:.3f}" for y in s["curve"][name])] for name in curve_names]),
              ""]
    if _plot(s, out_dir / "bon_curve.png"):
        lines.append("![bon_curve.png](bon_curve.png)")
    lines += ["", *settings_block(meta.get("settings"))]
    (out_dir / "bon_report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "bon_results.json").write_text(strict_json(s), encoding="utf-8")
    return s


def _pct_ci(x: dict[str, Any], signed: bool = False) -> str:
    v, (lo, hi) = x["rate"] if "rate" in x else x["diff"], x["ci"]
    if signed:
        return f"{v * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]"
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def verified_markdown(s: dict[str, Any], *, items_per_s: dict[str, float] | None = None) -> str:
    """The tables of a :func:`~fliprm.eval.bon_verdicts.summarize_verified` summary: pass rates
    of the pick (%, 95% CI), paired differences to each reference, the curve over N."""
    from .bon_verdicts import METRICS

    names = ["prompt strict", "prompt loose", "inst strict", "inst loose"]
    rows = []
    for m, v in s["methods"].items():
        row = [m, *(_pct_ci(v[k]) for k in METRICS)]
        if items_per_s is not None:
            rate = items_per_s.get(m)
            row.append("-" if rate is None else f"{rate:.2f}")
        rows.append(row)
    head = ["pick", *names] + (["items/s"] if items_per_s is not None else [])
    n = s["sizes"][-1]
    lines = [(f"Verifier pass rate of the pick out of N={n}, % over {s['n_prompts']} prompts "
             "[95% bootstrap CI]. random = the expected rate of a uniform pick, oracle = the "
             "pool's best candidate per metric."), "", md_table(head, rows), ""]
    refs = list(dict.fromkeys(r for v in s["methods"].values() for r in v["diff"]))
    for ref in refs:
        diff_rows = [[m, *(_pct_ci(v["diff"][ref][k], signed=True) for k in METRICS)]
                     for m, v in s["methods"].items() if ref in v["diff"]]
        lines += [f"Paired difference to {ref} (percentage points, bootstrap over prompts):", "",
                  md_table(["pick", *names], diff_rows), ""]
    pools = "the first N candidates" if s.get("first_n") else "a seeded random subset of N"
    for k, name in zip(METRICS[:2], names[:2]):
        lines += [f"Curve over N, {name} % (pools: {pools}):", "",
                  md_table(["pick", *(f"N={x}" for x in s["sizes"])],
                           [[m, *(fmt(y) for y in c[k])] for m, c in s["curve"].items()]), ""]
    return "\n".join(lines)


def write_verified_report(
    pools: Sequence[dict[str, Any]], out_dir: str | Path, *, suite: str,
    meta: dict[str, Any] | None = None, excluded: dict[str, str] | None = None,
    run: dict[str, Any] | None = None, dataset: str | None = None,
) -> dict[str, Any]:
    """Write ``verify_report.md`` and ``verify_results.json`` for ``rerank --verifier``;
    return the summary. ``excluded``: row id -> why its candidates could not be checked.
    ``run`` and ``dataset`` give the same provenance header as :func:`write_bon_report`."""
    from .bon_verdicts import summarize_verified

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    if run:
        meta["run"] = run
    dry = bool(run and run.get("dry_run"))
    s = summarize_verified(pools)
    s = {"dry_run": dry, **({"notice": DRY_RUN} if dry else {}), **s, "suite": suite,
         "meta": meta, "excluded": excluded or {}}
    title = f"Best-of-N against the {suite} checkers" + (f" on {dataset}" if dataset else "")
    lines = header_lines(title, run, meta)
    if excluded:
        lines += [f"{len(excluded)} row(s) left out, a checker cannot give a verdict:", ""]
        lines += [f"- {rid}: {why}" for rid, why in excluded.items()]
        lines += [""]
    lines += [verified_markdown(s)] if s.get("methods") else ["No row could be checked."]
    (out_dir / "verify_report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "verify_results.json").write_text(strict_json(s), encoding="utf-8")
    return s
