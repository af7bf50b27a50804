"""Why does FLIP not rank same-topic answers by quality? Data, and one correction tried.

    python bench/same_topic.py --rows flip-short,flip --out runs/shootout

Reads the shoot-out's records (``bench/shootout.py``; no model calls) and prints, for pref4
(same prompt, the annotator's better answer vs three clearly worse ones):

* the answers' lengths, how often the chosen one is the longest, and how many are cut by the
  shoot-out's ``max_response_chars`` (2,400);
* the mean reward of chosen and rejected answers and the within-item correlation of reward
  with length (is FLIP length-biased, either way?);
* a **contrastive** correction: each candidate's F1 against its own prompt minus its mean F1
  against 200 other prompts of the set, which rewards inferred instructions that fit *this*
  prompt rather than any prompt. Accuracy with and without it on pref4 and focus4 (the paired
  difference with a 95% bootstrap interval), so a gain on pref4 cannot hide a loss on focus4.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sets import candidates, read_rows

from fliprm import f1_score
from fliprm.eval.rb2_scoring import item_credit
from fliprm.eval.stats import bootstrap_ci, paired_diff
from fliprm.judges import top_indices

#: the sets contrasted (their shoot-out records are read)
SETS = ("focus4", "pref4")


def rb2_credit(rewards: list[float | None]) -> float:
    """The RewardBench 2 tie rule (fliprm.eval's): 1/k for a k-way tie at the top."""
    return item_credit(top_indices(rewards))


def lengths(row: str, out: Path, cut: int) -> None:
    rows = read_rows("pref4")
    recs = {x["id"]: x for x in map(json.loads, (out / row / "pref4.jsonl").read_text().splitlines())}
    pairs = [(r, recs[str(r.get("id", i))]) for i, r in enumerate(rows) if str(r.get("id", i)) in recs]
    chosen_len = [len(candidates(r)[0]) for r, _ in pairs]
    rejected_len = [len(c) for r, _ in pairs for c in candidates(r)[1:]]
    longest = sum(1 for r, _ in pairs if len(candidates(r)[0]) == max(map(len, candidates(r))))
    corr = []
    for r, rec in pairs:
        lens = [min(len(c), cut) for c in candidates(r)]
        rw = [-1.0 if x is None else x for x in rec["rewards"]]
        try:
            corr.append(statistics.correlation(lens, rw))
        except statistics.StatisticsError:  # equal lengths or rewards: no correlation defined
            pass
    chosen_r = [rec["rewards"][0] for _, rec in pairs if rec["rewards"][0] is not None]
    rejected_r = [x for _, rec in pairs for x in rec["rewards"][1:] if x is not None]
    print(f"[{row}] pref4, {len(pairs)} items: median length chosen {statistics.median(chosen_len):.0f}"
          f" vs rejected {statistics.median(rejected_len):.0f} chars; chosen is the longest in "
          f"{longest}/{len(pairs)}; cut at {cut}: chosen {sum(x > cut for x in chosen_len)}, "
          f"rejected {sum(x > cut for x in rejected_len)}/{len(rejected_len)}")
    print(f"[{row}] mean reward chosen {statistics.fmean(chosen_r):.3f} vs rejected "
          f"{statistics.fmean(rejected_r):.3f}; within-item corr(length, reward) "
          f"{statistics.fmean(corr):+.3f}")


def contrastive(row: str, out: Path, others: int) -> None:
    for name in SETS:
        rows = read_rows(name)
        path = out / row / f"{name}.jsonl"
        if not path.exists():
            continue
        recs = {x["id"]: x for x in map(json.loads, path.read_text().splitlines())}
        if not any(i for rec in recs.values() for i in rec["inferred"]):
            print(f"[{row}] {name}: no inferred instructions (not an F1 row): nothing to contrast")
            continue
        prompts = [r["prompt"] for r in rows]
        base, con = [], []
        for i, r in enumerate(rows):
            rec = recs.get(str(r.get("id", i)))
            if rec is None:
                continue
            pool = [p for k, p in enumerate(prompts) if k != i][:others]
            scores: list[float | None] = []
            for inferred in rec["inferred"]:
                if inferred is None:  # a parse failure: no instruction to contrast
                    scores.append(None)
                    continue
                own = f1_score(inferred, r["prompt"]).f1
                scores.append(own - statistics.fmean(f1_score(inferred, p).f1 for p in pool))
            base.append(rb2_credit(rec["rewards"]))
            con.append(rb2_credit(scores))
        d, lo, hi = paired_diff(con, base)
        b_lo, b_hi = bootstrap_ci([base])
        c_lo, c_hi = bootstrap_ci([con])
        print(f"[{row}] {name} (n={len(base)}): F1 {statistics.fmean(base):.3f} [{b_lo:.2f},{b_hi:.2f}]"
              f"  contrastive {statistics.fmean(con):.3f} [{c_lo:.2f},{c_hi:.2f}]"
              f"  paired {d:+.3f} [{lo:+.3f},{hi:+.3f}]")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="flip-short")
    ap.add_argument("--out", type=Path, default=Path("runs/shootout"))
    ap.add_argument("--max-response-chars", type=int, default=2400)
    ap.add_argument("--others", type=int, default=200, help="prompts to contrast against")
    args = ap.parse_args(argv)
    for row in [r for r in args.rows.split(",") if r]:
        lengths(row, args.out, args.max_response_chars)
        contrastive(row, args.out, args.others)


if __name__ == "__main__":
    main()
