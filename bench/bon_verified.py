"""Best-of-N with verifiers (the paper's test-time scaling): does a reward's pick out of N sampled
responses follow the prompt's IFEval / IFBench instructions more often than a random pick?

    # score (resumable; a rerun with other settings for a row is refused)
    python bench/bon_verified.py --sets ifeval,ifbench --rows default,flip-short,paper,pointwise
    # the table (reads what is there)
    python bench/bon_verified.py --report --sets ifeval,ifbench

Input: ``RESULTS/candidates-{set}.jsonl`` from ``bench/bon_generate.py``, one row per sample:
``{"set", "key", "prompt", "instruction_id_list", "kwargs", "k", "response", ...}`` (k = 0..7).
Rows (the methods that pick): ``default`` (FlipReward() with the library's default config),
``flip-short`` (method f1), ``paper`` (RewardConfig.preset("paper")), ``pointwise`` (the 1-10 LLM
judge); no model: ``longest``, ``random`` (the exact expectation of a uniform pick) and
``oracle`` (the pool's best verifier outcome). Each candidate is scored on its own and cached per
(row, key, k) in ``RESULTS/scores-{row}-{set}.jsonl`` (settings beside it, ``.fliprm.json``).

Report, per set and pick: the checkers' pass rates of the pick out of N=8 (prompt-level strict
and loose, instruction-level strict and loose, 95% bootstrap CIs over prompts), paired
differences to random and to pointwise, the curve over N = 1, 2, 4, 8 (the first N candidates of
each pool, the same pools for every pick) and items (candidates scored) per second. A prompt
counts once every scoring row has scored all its candidates; prompts whose checkers cannot give
a verdict (NLTK data not installed, kwargs that leave an argument to chance) are left out and
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import _read_jsonl

from fliprm import FlipReward
from fliprm.config import RewardConfig, RuntimeOptions
from fliprm.errors import FlipError
from fliprm.eval.bon_report import verified_markdown
from fliprm.eval.bon_verdicts import summarize_verified
from fliprm.eval.stats import strict_json
from fliprm.judges import FlipJudge, Judge, get_judge
from fliprm.records import ResultWriter, read_records

RESULTS = Path(__file__).resolve().parent / "results" / "bon_verified"
SETS = ("ifeval", "ifbench")

#: scoring row -> (how to build its judge from a backend spec and runtime, description)
ROWS: dict[str, tuple[Callable[[str | None, RuntimeOptions], Judge], str]] = {
    "default": (lambda be, rt: FlipJudge(reward=FlipReward(be, runtime=rt)),
                "FlipReward() as shipped (the library's default config)"),
    "flip-short": (lambda be, rt: FlipJudge(reward=FlipReward(
        be, config=RewardConfig(method="f1"), runtime=rt)), "word F1, instruction only"),
    "paper": (lambda be, rt: FlipJudge(reward=FlipReward(
        be, config=RewardConfig.preset("paper"), runtime=rt)), "the paper's reference path"),
    # the judge runs on the engine a default FlipReward builds (same backend, threads, retries)
    "pointwise": (lambda be, rt: get_judge("pointwise", engine=FlipReward(be, runtime=rt).engine,
                                           config=RewardConfig()),
                  "the pointwise 1-10 LLM judge"),
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_pools(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Candidates grouped per prompt key, in k order: ``{key, prompt, instruction_id_list,
    kwargs, responses}``. A key whose k values are not 0..n-1 is refused (a gap would shift the
    first-N pools)."""
    if not path.is_file():
        raise SystemExit(f"candidates not found: {path} (bench/bon_generate.py writes them)")
    by_key: dict[str, dict[str, Any]] = {}
    for r in _read_jsonl(path):
        key = str(r["key"])
        p = by_key.setdefault(key, {"key": key, "prompt": r["prompt"], "cands": {},
                                    "instruction_id_list": r["instruction_id_list"],
                                    "kwargs": r["kwargs"]})
        if r["k"] in p["cands"]:
            raise SystemExit(f"{path}: key {key!r} has k={r['k']} twice")
        p["cands"][int(r["k"])] = r["response"]
    pools = []
    for p in by_key.values():
        ks = sorted(p["cands"])
        if ks != list(range(len(ks))):
            raise SystemExit(f"{path}: key {p['key']!r} has k={ks}, expected 0..{len(ks) - 1}")
        pools.append({**{k: v for k, v in p.items() if k != "cands"},
                      "responses": [p["cands"][k] for k in ks]})
    return pools[:limit] if limit is not None else pools


def _score_path(results: Path, row: str, name: str) -> Path:
    return results / f"scores-{row}-{name}.jsonl"


def _read_scores(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    # read_records, not _read_jsonl: a killed run's half-written last line is skipped here
    # (ResultWriter cuts it off and redoes the item)
    return {r["id"]: r for _, r in read_records(path)
            if isinstance(r, dict) and "id" in r and not r.get("error")}


def _check_same_responses(scores: dict[str, dict[str, Any]], pools: list[dict[str, Any]],
                          path: Path) -> None:
    for p in pools:
        for k, resp in enumerate(p["responses"]):
            rec = scores.get(f"{p['key']}|{k}")
            if rec is not None and rec["sha"] != _sha(resp):
                raise SystemExit(f"{path}: {p['key']}|{k} was scored on another response; "
                                 "the candidates changed: use another --results folder")


async def score_row(row: str, name: str, pools: list[dict[str, Any]], results: Path, *,
                    backend: str | None, threads: int | None, concurrency: int) -> int:
    """Score every candidate not yet in the row's cache; return how many were scored now."""
    judge = ROWS[row][0](backend, RuntimeOptions(n_threads=threads))
    path = _score_path(results, row, name)
    _check_same_responses(_read_scores(path), pools, path)
    try:
        writer = ResultWriter(path, key_field="id", retry_errors=True,
                              manifest={"settings": {row: judge.identity()}})
    except FlipError as exc:
        await judge.aclose()
        raise SystemExit(f"[{row}] {exc}") from None
    todo = [(p, k) for p in pools for k in range(len(p["responses"]))
            if f"{p['key']}|{k}" not in writer.done]
    print(f"[{row}] {name}: {len(writer.done)} done, {len(todo)} to score", file=sys.stderr,
          flush=True)
    sem = asyncio.Semaphore(max(1, concurrency))
    n = 0

    async def one(p: dict[str, Any], k: int) -> None:
        nonlocal n
        resp = p["responses"][k]
        async with sem:
            j = await judge.arank(p["prompt"], [resp])
        rec: dict[str, Any] = {"id": f"{p['key']}|{k}", "key": p["key"], "k": k,
                               "score": j.scores[0], "seconds": round(j.seconds, 3),
                               "calls": j.calls, "tokens": j.tokens, "sha": _sha(resp)}
        if j.errors:
            rec["error"] = "; ".join(map(str, j.errors))
        writer.write(rec)
        n += 1
        print(f"[{row}] {name} {n}/{len(todo)} {rec['id']} score={rec['score']} "
              f"{rec['seconds']:.1f}s", file=sys.stderr, flush=True)

    try:
        await asyncio.gather(*(one(p, k) for p, k in todo))
    finally:
        writer.close()
        await judge.aclose()
    return n


def _verdicts(pools: list[dict[str, Any]], name: str) -> tuple[dict[str, list], Counter]:
    from fliprm.errors import InputError
    from fliprm.verifiers import VerifierUnavailable, verify

    out: dict[str, list] = {}
    missing: Counter = Counter()
    for p in pools:
        try:
            out[p["key"]] = [asdict(verify(p, r, name)) for r in p["responses"]]  # type: ignore[arg-type]
        except VerifierUnavailable as exc:
            missing[f"{exc.instruction}: {exc.reason}"] += 1
        except InputError as exc:
            raise SystemExit(f"{name} key {p['key']!r}: {exc}") from None
    return out, missing


def report_set(name: str, pools: list[dict[str, Any]], results: Path, rows: list[str],
               seed: int = 0, n_boot: int = 2000) -> tuple[str, dict[str, Any]]:
    """The markdown section and the summary of one set."""
    verdicts, missing = _verdicts(pools, name)
    scores = {row: _read_scores(_score_path(results, row, name)) for row in rows}
    for row in rows:
        _check_same_responses(scores[row], pools, _score_path(results, row, name))
    ready, waiting = [], 0
    for p in pools:
        if p["key"] not in verdicts:
            continue
        ids = [f"{p['key']}|{k}" for k in range(len(p["responses"]))]
        if not all(i in scores[row] for row in rows for i in ids):
            waiting += 1
            continue
        ready.append({"id": p["key"], "verdicts": verdicts[p["key"]],
                      "lengths": [len(r) for r in p["responses"]],
                      "scores": {row: [scores[row][i]["score"] for i in ids] for row in rows}})
    lines = [f"## {name}", ""]
    left = sum(missing.values())
    if left:
        why = ", ".join(f"{k} ({v})" for k, v in missing.most_common())
        lines += [f"{left} prompt(s) left out, a checker cannot give a verdict: {why}.", ""]
    if waiting:
        lines += [f"{waiting} prompt(s) not yet scored by every row.", ""]
    refs = ("random", "pointwise") if "pointwise" in rows else ("random",)
    s = summarize_verified(ready, first_n=True, refs=refs, seed=seed, n_boot=n_boot)
    if not s:
        return "\n".join([*lines, "No prompt is ready.", ""]), {}
    used = {i for p in ready for i in (f"{p['id']}|{k}" for k in range(len(p["verdicts"])))}
    rates = {}
    for row in rows:
        secs = sum(scores[row][i]["seconds"] for i in used)
        rates[row] = len(used) / secs if secs > 0 else float("inf")
    s["items_per_s"] = rates
    s["left_out"] = dict(missing)
    return "\n".join([*lines, verified_markdown(s, items_per_s=rates)]), s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="ifeval,ifbench")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"scoring rows: {', '.join(ROWS)}")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--backend", default=None, help="backend spec (default: embedded; fake for "
                    "a dry run)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads per row")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each set")
    ap.add_argument("--seed", type=int, default=0, help="tie-break seed")
    ap.add_argument("--report", action="store_true", help="print the table, score nothing")
    a = ap.parse_args(argv)
    sets = [s.strip() for s in a.sets.split(",") if s.strip()]
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    bad = [s for s in sets if s not in SETS] + [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown set/row {', '.join(bad)}; sets: {', '.join(SETS)}; rows: "
                         f"{', '.join(ROWS)}")
    for name in sets:
        pools = load_pools(a.results / f"candidates-{name}.jsonl", a.limit)
        if a.report:
            text, s = report_set(name, pools, a.results, rows, seed=a.seed)
            print(text)
            (a.results / f"report-{name}.json").write_text(strict_json(s), encoding="utf-8")
            continue
        for row in rows:
            asyncio.run(score_row(row, name, pools, a.results, backend=a.backend,
                                  threads=a.threads, concurrency=a.concurrency))


if __name__ == "__main__":
    main()
