"""Markdown, JSON and a PNG curve for a best-of-N reranking run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .best_of_n import summarize_bon
from .stats import failed_note, fmt, md_table, strict_json

__all__ = ["write_bon_report"]


def _plot(s: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in s["curve"].items():
        style = "--" if name in ("random", "oracle") else "-"
        ax.plot(s["sizes"], ys, style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(s["sizes"], [str(n) for n in s["sizes"]])
    ax.set_xlabel("N (a seeded random subset of N candidates per row)")
    ax.set_ylabel("mean label of the pick")
    ax.set_title("Best-of-N")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_bon_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, *, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``bon_report.md``, ``bon_results.json`` and ``bon_curve.png``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarize_bon(records)
    if not s:
        return s
    s["meta"] = meta or {}
    lines = ["# Best-of-N reranking", ""] + [f"- {k}: `{v}`" for k, v in (meta or {}).items()]
    n = s["sizes"][-1]
    rows = [[m, f"**{v['mean_label']:.3f}** [{v['ci'][0]:.3f}-{v['ci'][1]:.3f}]", v["n"],
             fmt(v["tie_rate"]), fmt(v["parse_failure_rate"]), f"{v['tokens_per_item']:.0f}",
             f"{v['seconds_per_item']:.1f}"] for m, v in s["methods"].items()]
    rows += [["random pick", f"{s['curve']['random'][-1]:.3f}", s["n_rows"], "", "", "", ""],
             ["oracle", f"{s['curve']['oracle'][-1]:.3f}", s["n_rows"], "", "", "", ""]]
    lines += ["", (f"Mean label of the picked candidate out of N={n} (95% bootstrap CI). Ties at "
                   "the top are broken by a seeded uniform choice."), "",
              md_table(["method", "mean label", "rows", "tie rate %", "parse failures %",
                        "tokens / row", "seconds / row"], rows), "",
              *failed_note({m: v.get("n_failed", 0) for m, v in s["methods"].items()}),
              "## Curve over N (pools: a seeded random subset of N candidates per row)", "",
              md_table(["pick", *(f"N={k}" for k in s["sizes"])],
                       [[name, *(f"{y:.3f}" for y in ys)] for name, ys in s["curve"].items()]), ""]
    if _plot(s, out_dir / "bon_curve.png"):
        lines.append("![bon_curve.png](bon_curve.png)")
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
) -> dict[str, Any]:
    """Write ``verify_report.md`` and ``verify_results.json`` for ``rerank --verifier``;
    return the summary. ``excluded``: row id -> why its candidates could not be checked."""
    from .bon_verdicts import summarize_verified

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarize_verified(pools)
    s = {**s, "suite": suite, "meta": meta or {}, "excluded": excluded or {}}
    lines = [f"# Best-of-N against the {suite} checkers", ""]
    lines += [f"- {k}: `{v}`" for k, v in (meta or {}).items()]
    if excluded:
        lines += ["", f"{len(excluded)} row(s) left out, a checker cannot give a verdict:", ""]
        lines += [f"- {rid}: {why}" for rid, why in excluded.items()]
    lines += [""]
    lines += [verified_markdown(s)] if s.get("methods") else ["No row could be checked."]
    (out_dir / "verify_report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "verify_results.json").write_text(strict_json(s), encoding="utf-8")
    return s
