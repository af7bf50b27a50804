"""Summaries, Markdown report, results.json and plots for a RewardBench 2 run."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .provenance import DRY_RUN, header_lines, settings_block
from .rb2_scoring import ties_score
from .stats import bold_best, bootstrap_ci, failed_note, fmt, md_table, mean, spread, strict_json

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


def _per_run_accuracy(scored: list[dict[str, Any]]) -> list[float]:
    """Overall accuracy (mean over subsets) of each run on its own: the spread across runs."""
    out = []
    for run in sorted({r["run"] for r in scored}):
        recs = [r for r in scored if r["run"] == run]
        out.append(mean([mean([r["credit"] for r in recs if r["subset"] == sub])
                         for sub in sorted({r["subset"] for r in recs})]))
    return out


def _headline(m: dict[str, Any]) -> float:
    acc = m["accuracy"]
    return -math.inf if acc is None or math.isnan(acc) else acc


def summarize(records: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Per-method accuracy (overall = mean over subsets, with a 95% bootstrap CI over items, and
    the spread of the per-run overall accuracy across runs), per-subset accuracy, tie and
    parse-failure rates, cost, Ties score, accuracy by length bucket and the mean score of
    chosen / rejected answers by length bucket. Methods come best first (by overall accuracy).

    Error records (judge calls that failed) are left out of every number: ``n_scored`` and
    ``n_failed`` count (method, run, item) records with and without a verdict."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    out: dict[str, Any] = {"methods": {}, "subsets": sorted({r["subset"] for r in records})}
    # a random pick's expected credit: 25% on RB2's 4-way items, 50% on pairs
    odds = {r["item_id"]: r["num_correct"] / r["n_candidates"] for r in records
            if r.get("n_candidates") and r.get("credit") is not None and not r.get("error")}
    out["chance"] = mean(list(odds.values())) if odds else None
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
            "runs_spread": spread(_per_run_accuracy(scored)),
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
        m["length_buckets"] = {}
        for _, _, label in LENGTH_BUCKETS:
            if buckets.get(label):
                per_item = list(_item_means(buckets[label]).values())
                m["length_buckets"][label] = {"accuracy": mean(per_item), "n": len(per_item),
                                              "ci": list(bootstrap_ci([per_item], seed=seed))}
        if method != "longest":  # its score is the length itself: a tautology here
            m["score_by_length"] = _score_by_length(recs)
        out["methods"][method] = m
    out["methods"] = dict(sorted(out["methods"].items(), key=lambda kv: -_headline(kv[1])))
    if "flip" in out["methods"]:
        flip = out["methods"]["flip"]["accuracy"]
        out["flip_relative_gain"] = {
            name: (flip - m["accuracy"]) / m["accuracy"] if m["accuracy"] else None
            for name, m in out["methods"].items() if name != "flip"
        }
    return out


def _bars(ax: Any, xs: list[float], ys: list[float | None], width: float, label: str,
          yerr: list[list[float]] | None, ns: list[int | None]) -> None:
    """Bars that stay visible at 0 (an outlined stub and its value) with n above each."""
    heights = [0.0 if y is None else y for y in ys]
    bars = ax.bar(xs, heights, width, label=label, yerr=yerr, capsize=2, edgecolor="black",
                  linewidth=0.5, error_kw={"elinewidth": 0.8})
    color = bars.patches[0].get_facecolor() if bars.patches else None
    for x, y, n, top in zip(xs, ys, ns, (yerr[1] if yerr else [0.0] * len(xs)), strict=True):
        if y is None:
            continue
        if y == 0:  # a zero-height bar draws nothing: mark it with a thick line at 0
            ax.plot([x - width / 2, x + width / 2], [0, 0], color=color, linewidth=3,
                    solid_capstyle="butt")
        ax.annotate(f"{y * 100:.0f}" + (f"\nn={n}" if n is not None else ""), (x, y + top),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=6)


def _plots(summary: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    methods = list(summary["methods"])
    name = summary.get("dataset") or "RewardBench 2"
    written = []
    for fname, key, title, labels in (
        ("accuracy_by_subset.png", "subsets", f"{name}: accuracy by subset",
         sorted({s for m in methods for s in summary["methods"][m]["subsets"]})),
        ("accuracy_by_length.png", "length_buckets",
         f"{name}: accuracy by mean answer length (words)",
         [b[2] for b in LENGTH_BUCKETS
          if any(b[2] in summary["methods"][m]["length_buckets"] for m in methods)]),
    ):
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * max(len(methods), 2) / 2 + 2),
                                        4.5))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            cells = summary["methods"][method][key]
            xs = [x + i * width for x in range(len(labels))]
            ys = [cells[lab]["accuracy"] if lab in cells else None for lab in labels]
            cis = [cells[lab].get("ci") if lab in cells else None for lab in labels]
            lo = [0.0 if y is None or not ci or ci[0] is None else max(y - ci[0], 0.0)
                  for y, ci in zip(ys, cis, strict=True)]
            hi = [0.0 if y is None or not ci or ci[1] is None else max(ci[1] - y, 0.0)
                  for y, ci in zip(ys, cis, strict=True)]
            ns = [cells[lab]["n"] if lab in cells else None for lab in labels]
            _bars(ax, xs, ys, width, method, [lo, hi], ns)
        chance = summary.get("chance")
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1,
                       label=f"random pick ({chance * 100:.0f}%)")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels)
        ax.set_ylim(0, 1.18)  # room for the value and n above a bar at 1.0
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_xlabel("above each bar: accuracy % and n items", fontsize=8)
        ax.set_title(title + (f"\n{DRY_RUN}" if summary.get("dry_run") else ""), fontsize=10)
        # outside on the right: never over a bar or its label, whatever the number of methods
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def _score_cell(c: dict[str, Any]) -> str:
    def one(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    return f"{one(c['chosen'])} / {one(c['rejected'])} (n={c['n_chosen']}/{c['n_rejected']})"


def _across_runs(m: dict[str, Any]) -> str:
    sp = m.get("runs_spread") or {}
    if sp.get("runs", 0) < 2:
        return "-"
    return f"{fmt(sp['mean'])} ± {fmt(sp['std'])} ({fmt(sp['min'])}-{fmt(sp['max'])})"


def write_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, *, meta: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None, dataset: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json`` and PNG plots into ``out_dir``; return the summary.

    ``run``: the provenance (:func:`~fliprm.eval.provenance.run_info`), shown at the top and
    kept in ``results.json`` under ``meta.run``; a fake-backend run is labelled a dry run on the
    first line of both. ``dataset`` names the data in titles (default: RewardBench 2).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    dry = bool(run and run.get("dry_run"))
    s: dict[str, Any] = {"dry_run": dry}
    if dry:
        s["notice"] = DRY_RUN
    s.update(summarize(records))
    if run:
        meta["run"] = run
    s["meta"] = meta
    s["dataset"] = dataset or "RewardBench 2"
    s["plots"] = _plots(s, out_dir)
    ms = s["methods"]
    title = ("RewardBench 2 evaluation" if s["dataset"] == "RewardBench 2"
             else f"{s['dataset']}: evaluation with RewardBench 2 scoring")
    lines = header_lines(title, run, meta)
    lines += [("Accuracy in %, 95% bootstrap CI over items in brackets, best per column in "
               "bold, methods best first. Overall = mean of the subsets. Scoring as RewardBench "
               "2: a k-way tie at the top that includes the chosen answer earns 1/k; no verdict "
               "on a 4-way item earns 0.25 (chance 25%). Across runs: mean ± std (min-max) of "
               "each run's overall accuracy. Scored / failed: (run, item) records with a "
               "verdict / whose judge calls failed (left out of every number)."), ""]
    subs = sorted({x for m in ms.values() for x in m["subsets"]})
    names = list(ms)
    cols = [bold_best([fmt(ms[n]["accuracy"]) for n in names], [ms[n]["accuracy"] for n in names])]
    for x in subs:
        vals = [ms[n]["subsets"][x]["accuracy"] if x in ms[n]["subsets"] else None for n in names]
        cols.append(bold_best([fmt(v) if v is not None else "-" for v in vals], vals))
    multi = any(m["runs"] > 1 for m in ms.values())
    rows = []
    for i, name in enumerate(names):
        m = ms[name]
        cells = [f"{cols[j + 1][i]} [{fmt(m['subsets'][x]['ci'][0], 0)}-"
                 f"{fmt(m['subsets'][x]['ci'][1], 0)}]" if x in m["subsets"] else "-"
                 for j, x in enumerate(subs)]
        rows.append([name, f"{cols[0][i]} [{fmt(m['ci'][0], 0)}-{fmt(m['ci'][1], 0)}]",
                     *([_across_runs(m)] if multi else []), *cells, m["n_items"], m["runs"],
                     m["n_scored"], m["n_failed"]])
    header = ["method", "overall", *(["across runs"] if multi else []), *subs, "items", "runs",
              "scored", "failed"]
    lines += ["## Accuracy", "", md_table(header, rows), ""]
    lines += failed_note({n: m["n_failed"] for n, m in ms.items()})
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
    lines += ["", *settings_block(meta.get("settings"))]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "results.json").write_text(strict_json(s), encoding="utf-8")
    return s
