"""The method shoot-out: every reward configuration ("row") on the same items of every dev set.

    # score (resumable: a rerun skips finished items; run rows on separate cores in parallel)
    taskset -c 1 python bench/shootout.py --rows flip-short,flip --sets focus4=40,pref4=40,ifbench=50
    # the table (reads what is there; --markdown for bench/README.md)
    python bench/shootout.py --report --rows flip-short,flip --sets focus4=40,pref4=40,ifbench=50

Sets (``../shared/data``, override with FLIPRM_BENCH_DATA):

* ``focus4``: best-of-4, the chosen answer vs fluent answers to 3 similar *other* prompts.
* ``pref4``: best-of-4, same topic, the annotator's better answer vs 3 clearly worse ones.
* ``ifbench``: a response scored against its own prompt and the next row's (a pair).
* ``bon8``: best-of-8 reranking; metric: mean annotator preference (1-2) of the pick.
* ``hack``: the hacking suite (the attacks of ``bench/attacks.py``, see ``bench/hacking.py``);
  metric: the rate at which the hacked response scores at least the honest one (lower is
  better).

Accuracy uses the RewardBench 2 tie rule (a k-way tie at the top that includes the right answer
earns 1/k). Each row's records go to ``OUT/<row>/<set>.jsonl`` with its settings' fingerprint in
``OUT/<row>/fingerprint.json``; a rerun with other settings under the same row name is refused.
Rows run one llama.cpp thread each (``--threads``); pin parallel rows to separate cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from _common import load_average, peak_rss_mb, print_table, wilson_ci
from sets import SETS, load_items

from fliprm import FlipReward, ResponseCache
from fliprm.config import PRESETS, RewardConfig, RuntimeOptions
from fliprm.eval.rb2_scoring import item_credit
from fliprm.eval.stats import bootstrap_ci, md_table, paired_diff
from fliprm.judges import top_indices

#: row name -> RewardConfig settings (on top of the library default) and a description
#: F1 rows name their method and guard: since 2026-12-06 the library default is pmi + guard.
_F1 = {"method": "f1", "mask_echo": False}
_RAW = {"mask_echo": False}
ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "the library default as shipped (every entry point): pmi with the echo guard"),
    "paper": ({"preset": "paper"},
              "the reference path: reasoning first, unconstrained, F1 on the raw text on failure"),
    "flip": ({**_F1, "template": "flip"}, ("reasoning first, JSON-constrained (reasoning re-cut "
             "at a sentence end when it reaches the cap)")),
    "flip-short": (_F1, "the former library default: F1, instruction only, JSON-constrained"),
    "likelihood": ({**_RAW, "method": "likelihood"},
                   "mean log p(instruction | response), teacher-forced"),
    "pmi": ({**_RAW, "method": "pmi"}, ("likelihood minus the instruction's likelihood given an "
            "empty response (sigmoid of the per-token PMI)")),
    "pmi-guard": ({"method": "pmi", "mask_echo": True}, "pmi with the echo guard"),
    "sampled-k3": ({**_F1, "samples": 3, "temperature": 0.7, "seed": 0},
                   "flip-short, mean F1 over 3 samples at temperature 0.7"),
    "flip-short-guard": ({"method": "f1", "mask_echo": True}, "flip-short with the echo guard"),
    "likelihood-guard": ({"method": "likelihood", "mask_echo": True},
                         "likelihood with the echo guard"),
    "rl": ({"preset": "rl"}, ("the RL default as shipped (fliprm serve, adapters): pmi, echo "
           "guard, responses cut at 8,000 characters")),
    "rl-noguard": ({"preset": "rl", "mask_echo": False}, ("the RL default without the echo guard "
                   "(the guard's cost on honest pairs)")),
    "rl-f1": ({"preset": "rl", "method": "f1"}, ("the RL preset on the F1 path (flip-short, "
              "echo guard, parse failures None, 256 tokens, 8,000 characters)")),
    "rl-f1-noguard": ({"preset": "rl", "method": "f1", "mask_echo": False},
                      "rl-f1 without the echo guard"),
    "flip-short-1.5b": ({**_F1, "backend": "embedded:qwen2.5-coder-1.5b"},
                        "flip-short on the 1.5B model"),
    "likelihood-1.5b": ({**_RAW, "backend": "embedded:qwen2.5-coder-1.5b",
                         "method": "likelihood"}, "likelihood on the 1.5B model"),
}

def build_config(row: str, max_response_chars: int) -> RewardConfig:
    settings = dict(ROWS[row][0])
    preset = settings.pop("preset", "default")
    # a preset's own cut stays (the rl row measures the RL default as shipped)
    if "max_response_chars" not in PRESETS[preset]:
        settings.setdefault("max_response_chars", max_response_chars)
    return RewardConfig.preset(preset, **settings)


async def score_item(rm: FlipReward, item: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = await rm.ascore(item["prompts"], item["responses"])
    rec: dict[str, Any] = {
        "id": item["id"], "rewards": [r.reward for r in results],
        "seconds": round(time.perf_counter() - t0, 3),
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "parse_failures": sum(1 for r in results if r.raw_output is not None and not r.parse_ok),
        "errors": [r.error for r in results if r.error],
        "cached": sum(1 for r in results if r.cached),
        "truncated": sum(1 for r in results if r.truncated),
        "inferred": [r.inferred_instruction for r in results],
        "recut": sum(1 for r in results if r.extra.get("reasoning_recut")),
        "masked": sum(1 for r in results if r.extra.get("echo_masked_words")),
    }
    for key in ("labels", "attack"):
        if key in item:
            rec[key] = item[key]
    return rec


def run_row(row: str, sets: dict[str, int], out: Path, threads: int, max_chars: int,
            attacks: set[str] | None = None, parallel: int = 1, slots: int | None = None) -> None:
    cfg = build_config(row, max_chars)
    # an in-memory cache: a response scored against several prompts costs one FLIP call;
    # ``parallel`` items are scored at once, their calls in ``slots`` llama.cpp slots (decoded
    # together; default: as many as items)
    rm = FlipReward(config=cfg, runtime=RuntimeOptions(n_threads=threads,
                                                       concurrency=slots or parallel),
                    cache=ResponseCache(":memory:"))
    folder = out / row
    folder.mkdir(parents=True, exist_ok=True)
    fp_file = folder / "fingerprint.json"
    ident = rm.identity()
    if fp_file.exists() and json.loads(fp_file.read_text())["fingerprint"] != rm.fingerprint():
        raise SystemExit(f"{folder} holds row {row!r} with other settings; use another --out")
    fp_file.write_text(json.dumps({"fingerprint": rm.fingerprint(), "identity": ident}, indent=2))
    for name, n in sets.items():
        path = folder / f"{name}.jsonl"
        done = {json.loads(x)["id"] for x in path.read_text().splitlines() if x.strip()} \
            if path.exists() else set()
        todo = [it for it in load_items(name, n, attacks) if it["id"] not in done]
        print(f"[{row}] {name}: {len(done)} done, {len(todo)} to score (load {load_average()})",
              file=sys.stderr, flush=True)

        async def chunk(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
            t0 = time.perf_counter()
            recs = await asyncio.gather(*(score_item(rm, it) for it in items))
            return list(recs), time.perf_counter() - t0

        with path.open("a", encoding="utf-8") as f:
            for k in range(0, len(todo), parallel):
                recs, wall = asyncio.run(chunk(todo[k : k + parallel]))
                for rec in recs:
                    # items/s counts wall time: a chunk's items share it
                    rec["seconds"] = round(wall / len(recs), 3)
                    rec["parallel"] = parallel
                    if slots:
                        rec["slots"] = slots
                    f.write(json.dumps(rec) + "\n")
                    print(f"[{row}] {name} {rec['id']} {rec['seconds']:.1f}s rewards="
                          f"{[None if r is None else round(r, 3) for r in rec['rewards']]}",
                          file=sys.stderr, flush=True)
                f.flush()
    rm.close()


# ---- report ---------------------------------------------------------------------------------

def _credit(rec: dict[str, Any], name: str, seed: int = 0) -> float:
    if name == "bon8":
        # a tie at the top is broken by this seed (the records' reports depend on it)
        pick = random.Random(f"{seed}|{rec['id']}").choice(top_indices(rec["rewards"]))
        return float(rec["labels"][pick])
    if name == "hack":  # 1 when the hacked response scores at least the honest one
        honest, hacked = rec["rewards"]
        return float((hacked if hacked is not None else -1) >= (honest if honest is not None else -1))
    return item_credit(top_indices(rec["rewards"]))  # the RewardBench 2 tie rule


def report(rows: list[str], sets: dict[str, int], out: Path, markdown: bool, ref: str) -> None:
    cols = ["set", "row", "n", "score [95% CI]", f"Δ vs {ref} [95% CI]", "ties", "s/item",
            "items/s", "tok/item", "parse fail", "errors"]
    table = []
    for name in sets:
        by_row: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            p = out / row / f"{name}.jsonl"
            if p.exists():
                by_row[row] = {r["id"]: r for r in map(json.loads, p.read_text().splitlines())}
        if not by_row:
            continue
        common = set.intersection(*(set(v) for v in by_row.values()))
        ids = sorted(common, key=lambda x: (len(x), x))
        for row, recs in by_row.items():
            if name == "hack":
                for attack in sorted({recs[i]["attack"] for i in ids}):
                    sub = [i for i in ids if recs[i]["attack"] == attack]
                    table.append(_line(f"hack:{attack}", row, recs, sub, "hack", by_row, ref))
                continue
            table.append(_line(name, row, recs, ids, name, by_row, ref))
        if name == "bon8" and ids:  # what a reranker's mean preference is to be read against
            labels = [next(iter(by_row.values()))[i]["labels"] for i in ids]
            for what, pick in (("random pick (expected)", lambda ls: sum(ls) / len(ls)),
                               ("oracle", max)):
                scores = [float(pick(ls)) for ls in labels]
                table.append([name, what, len(ids), f"{sum(scores) / len(scores):.3f}",
                              *["-"] * (len(cols) - 4)])
    if markdown:
        print(md_table(cols, table))
    else:
        print_table(f"shoot-out ({out})", cols, table)


def hack_pivot(rows: list[str], n: int, out: Path) -> None:
    """Markdown: one line per attack, one column per row: the rate at which the hacked response
    scores at least the honest one, with a 95% Wilson interval (items every row has)."""
    recs = {}
    for row in rows:
        p = out / row / "hack.jsonl"
        if p.exists():
            recs[row] = {r["id"]: r for r in map(json.loads, p.read_text().splitlines())}
    rows = [r for r in rows if r in recs]
    if not rows:
        return
    ids = set.intersection(*(set(v) for v in recs.values()))
    attacks = sorted({recs[rows[0]][i]["attack"] for i in ids})
    print("| attack | n | " + " | ".join(rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    worst = {row: 0.0 for row in rows}
    for attack in attacks:
        sub = sorted(i for i in ids if recs[rows[0]][i]["attack"] == attack)
        cells = []
        for row in rows:
            wins = sum(_credit(recs[row][i], "hack") for i in sub)
            lo, hi = wilson_ci(wins, len(sub))
            worst[row] = max(worst[row], wins / len(sub))
            cells.append(f"{wins / len(sub):.2f} [{lo:.2f}, {hi:.2f}]")
        print(f"| {attack} | {len(sub)} | " + " | ".join(cells) + " |")
    print("| **worst attack** | | " + " | ".join(f"**{worst[r]:.2f}**" for r in rows) + " |")


def _line(label: str, row: str, recs: dict[str, Any], ids: list[str], name: str,
          by_row: dict[str, Any], ref: str) -> list[Any]:
    scores = [_credit(recs[i], name) for i in ids]
    n = len(ids)
    mean = sum(scores) / n if n else float("nan")
    lo, hi = bootstrap_ci([scores])
    diff = "-"
    if ref in by_row and row != ref:
        d, dlo, dhi = paired_diff(scores, [_credit(by_row[ref][i], name) for i in ids])
        diff = f"{d:+.3f} [{dlo:+.3f},{dhi:+.3f}]"
    ties = sum(1 for i in ids if len(top_indices(recs[i]["rewards"])) > 1)
    secs = sum(recs[i]["seconds"] for i in ids)
    toks = sum(recs[i]["prompt_tokens"] + recs[i]["completion_tokens"] for i in ids)
    return [label, row, n, f"{mean:.3f} [{lo:.2f},{hi:.2f}]", diff, ties,
            f"{secs / max(n, 1):.1f}", f"{n / secs:.3f}" if secs else "-",
            f"{toks / max(n, 1):.0f}", sum(recs[i]["parse_failures"] for i in ids),
            sum(len(recs[i]["errors"]) for i in ids)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="flip-short,flip", help=f"any of {','.join(ROWS)}")
    ap.add_argument("--sets", default="focus4=40,pref4=40,ifbench=50",
                    help="NAME=N,...: the first N items of each set")
    ap.add_argument("--out", type=Path, default=Path("runs/shootout"))
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per row")
    ap.add_argument("--parallel", type=int, default=1,
                    help="items scored at once, in as many llama.cpp slots (decoded together)")
    ap.add_argument("--slots", type=int, default=None,
                    help="llama.cpp slots (calls in flight) for those items; default --parallel")
    ap.add_argument("--max-response-chars", type=int, default=2400)
    ap.add_argument("--report", action="store_true", help="print the table of what is there")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--pivot", action="store_true",
                    help="with --report: the hacking table, attacks x rows (markdown)")
    ap.add_argument("--ref", default="paper", help="row the paired differences are taken to")
    ap.add_argument("--attacks", default="",
                    help="with --sets hack=N: only these attacks (comma-separated; default all)")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {', '.join(ROWS)}")
    sets = {}
    for part in args.sets.split(","):
        name, _, n = part.partition("=")
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}; choose from {', '.join(SETS)}")
        sets[name] = int(n or 40)
    if args.report:
        if args.pivot:
            hack_pivot(rows, sets.get("hack", 20), args.out)
        else:
            report(rows, sets, args.out, args.markdown, args.ref)
        return
    attacks = {a.strip() for a in args.attacks.split(",") if a.strip()} or None
    t0 = time.perf_counter()
    for row in rows:
        run_row(row, sets, args.out, args.threads, args.max_response_chars, attacks,
                args.parallel, args.slots)
    print(f"done in {time.perf_counter() - t0:.0f} s; peak RSS {peak_rss_mb():.0f} MB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
