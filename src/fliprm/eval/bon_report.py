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
