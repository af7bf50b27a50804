"""Summaries, Markdown report, results.json and plots for a RewardBench 2 run."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .rb2_scoring import ties_score
from .stats import bootstrap_ci, failed_note, fmt, md_table, mean, strict_json

__all__ = ["LENGTH_BUCKETS", "summarize", "write_report"]

#: mean words per candidate: the paper finds FLIP stronger on long answers
LENGTH_BUCKETS = ((0, 100, "<100"), (100, 250, "100-249"), (250, 500, "250-499"),
                  (500, 10**9, "500+"))


def _bucket(n: float) -> str:
    return next(label for lo, hi, label in LENGTH_BUCKETS if lo <= n < hi)


def _item_means(recs: list[dict[str, Any]]) -> dict[str, float]:
    """Credit per item averaged over runs."""
    by_item: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        by_item[r["item_id"]].append(r["credit"])
    return {k: mean(v) for k, v in by_item.items()}


def _score_by_length(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean score of correct (chosen) and incorrect (rejected) answers by each answer's own
    word count. For FLIP the score is the reward, so this shows whether long answers earn more
    (or less) reward regardless of quality, and whether the chosen-rejected gap holds up."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"chosen": [], "rejected": []})
    for r in recs:
        lens = r.get("candidate_words")  # absent in records written before it was added
        if not lens:
            continue
        for i, (score, n) in enumerate(zip(r["scores"], lens)):
            if score is not None:
                cells[_bucket(n)]["chosen" if i < r["num_correct"] else "rejected"].append(score)
    return {
        label: {"chosen": mean(cells[label]["chosen"]), "rejected": mean(cells[label]["rejected"]),
                "n_chosen": len(cells[label]["chosen"]), "n_rejected": len(cells[label]["rejected"])}
        for _, _, label in LENGTH_BUCKETS if label in cells
    }


def summarize(records: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Per-method accuracy (overall = mean over subsets, with a 95% bootstrap CI over items),
    per-subset accuracy, tie and parse-failure rates, cost, Ties score, accuracy by length
    bucket and the mean score of chosen / rejected answers by length bucket.

    Error records (judge calls that failed) are left out of every number: ``n_scored`` and
    ``n_failed`` count (method, run, item) records with and without a verdict."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    out: dict[str, Any] = {"methods": {}, "subsets": sorted({r["subset"] for r in records})}
    for method, every in by_method.items():
        recs = [r for r in every if not r.get("error")]
        scored = [r for r in recs if r["credit"] is not None]
        subsets: dict[str, Any] = {}
        groups = []
        for sub in sorted({r["subset"] for r in scored}):
            per_item = list(_item_means([r for r in scored if r["subset"] == sub]).values())
            lo, hi = bootstrap_ci([per_item], seed=seed)
            subsets[sub] = {"accuracy": mean(per_item), "ci": [lo, hi], "n": len(per_item)}
            groups.append(per_item)
        lo, hi = bootstrap_ci(groups, seed=seed)
        calls = sum(r["calls"] for r in recs)
        m: dict[str, Any] = {
            "accuracy": mean([s["accuracy"] for s in subsets.values()]), "ci": [lo, hi],
            "subsets": subsets, "n_items": len({r["item_id"] for r in every}),
            "n_scored": len(recs), "n_failed": len(every) - len(recs),
            "runs": len({r["run"] for r in every}),
            "tie_rate": mean([float(r["tie"]) for r in scored]),
            "parse_failure_rate": sum(r["parse_failures"] for r in recs) / calls if calls else 0.0,
            "errors": sum(len(r["errors"]) for r in every),
            "tokens_per_item": mean([r["prompt_tokens"] + r["completion_tokens"] for r in recs]),
            "seconds_per_item": mean([r["seconds"] for r in recs]),
        }
        ties = [r for r in recs if r["subset"] == "Ties"]
        if ties:
            per_run = [ties_score((r["item_id"], r["scores"], r["num_correct"])
                                  for r in ties if r["run"] == run)
                       for run in sorted({r["run"] for r in ties})]
            m["ties"] = {k: mean([p[k] for p in per_run]) for k in per_run[0]}
        buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in scored:
            buckets[_bucket(r["mean_words"])].append(r)
        m["length_buckets"] = {
            label: {"accuracy": mean(list(_item_means(buckets[label]).values())),
                    "n": len(_item_means(buckets[label]))}
            for _, _, label in LENGTH_BUCKETS if buckets.get(label)
        }
        if method != "longest":  # its score is the length itself: a tautology here
            m["score_by_length"] = _score_by_length(recs)
        out["methods"][method] = m
    if "flip" in out["methods"]:
        flip = out["methods"]["flip"]["accuracy"]
        out["flip_relative_gain"] = {
            name: (flip - m["accuracy"]) / m["accuracy"] if m["accuracy"] else None
            for name, m in out["methods"].items() if name != "flip"
        }
    return out


def _plots(summary: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    methods = list(summary["methods"])
    written = []
    for fname, key, title, labels in (
        ("accuracy_by_subset.png", "subsets", "RewardBench 2 accuracy by subset",
         sorted({s for m in methods for s in summary["methods"][m]["subsets"]})),
        ("accuracy_by_length.png", "length_buckets", "Accuracy by mean answer length (words)",
         [b[2] for b in LENGTH_BUCKETS
          if any(b[2] in summary["methods"][m]["length_buckets"] for m in methods)]),
    ):
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) + 2), 4))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            cells = summary["methods"][method][key]
            xs = [x + i * width for x in range(len(labels))]
            ys = [cells.get(lab, {}).get("accuracy", 0.0) for lab in labels]
            yerr = None
            if key == "subsets":
                lo = [y - cells.get(lab, {}).get("ci", [y, y])[0] for lab, y in zip(labels, ys)]
                hi = [cells.get(lab, {}).get("ci", [y, y])[1] - y for lab, y in zip(labels, ys)]
                yerr = [lo, hi]
            ax.bar(xs, ys, width, label=method, yerr=yerr, capsize=2)
        ax.axhline(0.25, color="grey", linestyle="--", linewidth=1, label="chance (4-way)")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def _score_cell(c: dict[str, Any]) -> str:
    def one(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    return f"{one(c['chosen'])} / {one(c['rejected'])} (n={c['n_chosen']}/{c['n_rejected']})"


def write_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, *, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json`` and PNG plots into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarize(records)
    s["meta"] = meta or {}
    s["plots"] = _plots(s, out_dir)
    ms = s["methods"]
    lines = ["# RewardBench 2 evaluation", ""]
    if meta:
        lines += [f"- {k}: `{v}`" for k, v in meta.items()] + [""]
    lines += [("Accuracy in %, 95% bootstrap CI over items in brackets. Overall = mean of the "
               "subsets. Scoring as RewardBench 2: a k-way tie at the top that includes the "
               "chosen answer earns 1/k; no verdict on a 4-way item earns 0.25 (chance 25%)."), ""]
    subs = sorted({x for m in ms.values() for x in m["subsets"]})
    rows = []
    for name, m in ms.items():
        cells = [f"{fmt(m['subsets'][x]['accuracy'])} [{fmt(m['subsets'][x]['ci'][0], 0)}-"
                 f"{fmt(m['subsets'][x]['ci'][1], 0)}]" if x in m["subsets"] else "-" for x in subs]
        rows.append([name, f"**{fmt(m['accuracy'])}** [{fmt(m['ci'][0], 0)}-{fmt(m['ci'][1], 0)}]",
                     *cells, m["n_items"], m["runs"]])
    lines += ["## Accuracy", "", md_table(["method", "overall", *subs, "items", "runs"], rows), ""]
    lines += failed_note({n: m.get("n_failed", 0) for n, m in ms.items()})
    rows = [[n, fmt(m["tie_rate"]), fmt(m["parse_failure_rate"]), m["errors"],
             f"{m['tokens_per_item']:.0f}", f"{m['seconds_per_item']:.1f}"] for n, m in ms.items()]
    lines += ["## Ties, parse failures and cost", "",
              md_table(["method", "tie rate %", "parse failures % of calls", "errors",
                        "tokens / item", "seconds / item"], rows), ""]
    if s.get("flip_relative_gain"):
        rows = [[n, "-" if g is None else f"{g * 100:+.1f}%"] for n, g in s["flip_relative_gain"].items()]
        lines += ["## FLIP's relative gain over each baseline (overall accuracy)", "",
                  md_table(["baseline", "relative gain"], rows), ""]
    ties = {n: m["ties"] for n, m in ms.items() if "ties" in m}
    if ties:
        rows = [[n, fmt(t["score"]), fmt(t["ref_accuracy"]), fmt(t["tied_accuracy"]),
                 fmt(t["correctness_preferred"]), fmt(t["correctness_preferred_hard"])]
                for n, t in ties.items()]
        lines += ["## Ties (official weighted formula)", "",
                  md_table(["method", "score", "ref acc", "tied acc", "pref", "pref hard"], rows), ""]
    labels = [b[2] for b in LENGTH_BUCKETS if any(b[2] in m["length_buckets"] for m in ms.values())]
    rows = [[n, *(f"{fmt(m['length_buckets'][b]['accuracy'])} (n={m['length_buckets'][b]['n']})"
                  if b in m["length_buckets"] else "-" for b in labels)] for n, m in ms.items()]
    lines += ["## Accuracy by mean answer length (words per candidate)", "",
              md_table(["method", *labels], rows), ""]
    by_len = {n: m["score_by_length"] for n, m in ms.items() if m.get("score_by_length")}
    if by_len:
        labels = [b[2] for b in LENGTH_BUCKETS if any(b[2] in c for c in by_len.values())]
        rows = [[n, *(_score_cell(c[b]) if b in c else "-" for b in labels)]
                for n, c in by_len.items()]
        lines += ["## Score by answer length (words in that answer)", "",
                  ("Mean score of correct / incorrect answers, bucketed by each answer's own "
                   "length, in each method's units: FLIP = reward (word F1, 0-1), pointwise = "
                   "1-10 rating, pairwise = wins, listwise = 1 if picked."), "",
                  md_table(["method", *labels], rows), ""]
    lines += [f"![{p}]({p})" for p in s["plots"]]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "results.json").write_text(strict_json(s), encoding="utf-8")
    return s
