"""Best-of-N with verifiers (the paper's test-time scaling): does a reward's pick out of N sampled
responses follow the prompt's IFEval / IFBench instructions more often than a random pick?

    # score (resumable; a rerun with other settings for a row is refused)
    taskset -c 0 python bench/bon_verified.py --sets ifbench --rows default,flip-short,pointwise
    taskset -c 1 python bench/bon_verified.py --sets ifbench --rows paper
    # one row on two cores: a shard in its own folder (with a link to the candidates), merged
    taskset -c 1 python bench/bon_verified.py --sets ifeval --rows paper --shard 1/2 --results DIR
    python bench/bon_verified.py --sets ifeval --rows paper --merge DIR
    # the table (reads what is there)
    python bench/bon_verified.py --report --sets ifeval,ifbench

Input: ``RESULTS/candidates-{set}.jsonl`` from ``bench/bon_generate.py``, one row per sample:
``{"set", "key", "prompt", "instruction_id_list", "kwargs", "k", "response", ...}`` (k = 0..7).
Rows (the methods that pick): ``default`` (FlipReward() with the library's default config),
``flip-short`` (method f1), ``paper`` (RewardConfig.preset("paper")), ``pointwise`` (the 1-10 LLM
judge); no model: ``longest``, ``random`` (the exact expectation of a uniform pick) and
``oracle`` (the pool's best verifier outcome). A pool's candidates are scored together (see
:func:`score_sets`), each cached per (row, key, k) in ``RESULTS/scores-{row}-{set}.jsonl``
(settings beside it, ``.fliprm.json``).

Report, per set and pick: the checkers' pass rates of the pick out of N=8 (prompt-level strict
and loose, instruction-level strict and loose, 95% bootstrap CIs over prompts), paired
differences to random and to pointwise, the curve over N = 1, 2, 4, 8 (the first N candidates of
each pool, the same pools for every pick) and items (candidates scored) per second. A prompt
counts once every scoring row has scored all its candidates; prompts whose checkers cannot give
a verdict (NLTK data not installed, kwargs that leave an argument to chance) are left out and
counted (and not scored).
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

from sets import read_jsonl

from fliprm import FlipReward
from fliprm.config import RewardConfig, RuntimeOptions
from fliprm.errors import FlipError
from fliprm.eval.bon_report import verified_markdown
from fliprm.eval.bon_verdicts import summarize_verified
from fliprm.eval.stats import strict_json
from fliprm.judges import FlipJudge, Judge, get_judge
from fliprm.records import ResultWriter, manifest_path, read_manifest, read_records

RESULTS = Path(__file__).resolve().parent / "results" / "bon_verified"
SETS = ("ifeval", "ifbench")

#: scoring row -> (how to build its judge from a backend spec and runtime, description)
ROWS: dict[str, tuple[Callable[[str | None, RuntimeOptions], Judge], str]] = {
    "default": (lambda be, rt: FlipJudge(reward=FlipReward(be, runtime=rt)),
                "FlipReward() as shipped (the library's default config)"),
    "flip-short": (lambda be, rt: FlipJudge(reward=FlipReward(
        be, config=RewardConfig(method="f1"), runtime=rt)), "word F1, instruction only"),
    "pmi-min": (lambda be, rt: FlipJudge(reward=FlipReward(
        be, config=RewardConfig(method="pmi-min"), runtime=rt)),
        "the default with the worst-explained sentence's pmi instead of the mean"),
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
    kwargs, responses}``. A key without all n samples (k = 0..n-1) is left out and named."""
    if not path.is_file():
        raise SystemExit(f"candidates not found: {path} (bench/bon_generate.py writes them)")
    by_key: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(path):
        key = str(r["key"])
        p = by_key.setdefault(key, {"key": key, "prompt": r["prompt"], "cands": {},
                                    "instruction_id_list": r["instruction_id_list"],
                                    "kwargs": r["kwargs"]})
        if r["k"] in p["cands"]:
            raise SystemExit(f"{path}: key {key!r} has k={r['k']} twice")
        p["cands"][int(r["k"])] = r["response"]
    pools, partial = [], []
    n = max((len(p["cands"]) for p in by_key.values()), default=0)
    for p in by_key.values():
        ks = sorted(p["cands"])
        if ks != list(range(n)):
            # a prompt still being generated (bench/bon_generate.py appends as samples
            # finish): waits for its full pool, so the first-N pools stay comparable
            partial.append(p["key"])
            continue
        pools.append({**{k: v for k, v in p.items() if k != "cands"},
                      "responses": [p["cands"][k] for k in ks]})
    if partial:
        print(f"{path.name}: {len(partial)} prompt(s) without all {n} samples yet, left for "
              f"later: {', '.join(partial)}", file=sys.stderr)
    return pools[:limit] if limit is not None else pools


def _score_path(results: Path, row: str, name: str) -> Path:
    return results / f"scores-{row}-{name}.jsonl"


def _read_scores(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    # read_records, not read_jsonl: a killed run's half-written last line is skipped here
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


async def score_sets(rows: list[str], name: str, pools: list[dict[str, Any]], results: Path, *,
                     backend: str | None, threads: int | None, slots: int | None) -> int:
    """Score every candidate not yet in its row's cache; return how many were scored now.

    All rows share ONE backend (one model in memory, ``slots`` llama.cpp slots) and go pool by
    pool: a pool's N candidates are scored together by each row in turn (N calls decoded
    together), so a row whose prompt equals an earlier row's (the default and ``flip-short``
    share the template) starts from that row's KV cache. A record's ``seconds`` is the row's
    wall time on the pool over its candidates scored there.
    """
    shared = FlipReward(backend, runtime=RuntimeOptions(n_threads=threads, concurrency=slots))
    rt = RuntimeOptions(n_threads=threads, concurrency=slots)
    judges = {row: ROWS[row][0](shared.backend, rt) for row in rows}
    writers = {}
    try:
        for row in rows:
            path = _score_path(results, row, name)
            _check_same_responses(_read_scores(path), pools, path)
            try:
                writers[row] = ResultWriter(path, key_field="id", retry_errors=True,
                                            manifest={"settings": {row: judges[row].identity()}})
            except FlipError as exc:
                raise SystemExit(f"[{row}] {exc}") from None
        n = 0
        for p in pools:
            for row in rows:
                todo = [k for k in range(len(p["responses"]))
                        if f"{p['key']}|{k}" not in writers[row].done]
                if not todo:
                    continue
                j = await judges[row].arank(p["prompt"], [p["responses"][k] for k in todo])
                per = j.seconds / len(todo)
                for k, score in zip(todo, j.scores, strict=True):
                    rec: dict[str, Any] = {
                        "id": f"{p['key']}|{k}", "key": p["key"], "k": k, "score": score,
                        "seconds": round(per, 3), "calls": j.calls / len(todo),
                        "tokens": j.tokens / len(todo), "sha": _sha(p["responses"][k]),
                        "slots": slots}
                    if score is None:
                        rec["error"] = "; ".join(map(str, j.errors)) or "no score"
                    writers[row].write(rec)
                n += len(todo)
                print(f"[{row}] {name} key={p['key']} {len(todo)} scored in {j.seconds:.1f}s "
                      f"scores={j.scores}", file=sys.stderr, flush=True)
        return n
    finally:
        for w in writers.values():
            w.close()
        await shared.aclose()


def merge_scores(src: Path, results: Path, name: str, rows: list[str],
                 pools: list[dict[str, Any]]) -> dict[str, int]:
    """Append the records of ``src``'s scores files (a ``--shard`` run's own ``--results``
    folder) that ``results`` lacks; return how many per row. Refused, nothing written, when the
    shard's settings differ from the main file's or a record was scored on another response.
    """
    merged: dict[str, int] = {}
    for row in rows:
        path = _score_path(src, row, name)
        if not path.is_file():
            continue
        manifest = read_manifest(path)
        if manifest is None or not isinstance(manifest.get("settings"), dict):
            raise SystemExit(f"{path}: no settings beside it ({manifest_path(path).name}): "
                             "not a bon_verified scores file")
        scores = _read_scores(path)
        _check_same_responses(scores, pools, path)
        try:
            writer = ResultWriter(_score_path(results, row, name), key_field="id",
                                  retry_errors=True, manifest={"settings": manifest["settings"]})
        except FlipError as exc:
            raise SystemExit(f"[{row}] {exc}") from None
        with writer:
            new = [r for i, r in scores.items() if i not in writer.done]
            for rec in new:
                writer.write(rec)
        merged[row] = len(new)
        print(f"[{row}] {name}: {len(new)} record(s) merged from {path}", file=sys.stderr)
    return merged


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


def by_instruction(name: str, pools: list[dict[str, Any]], results: Path, rows: list[str],
                   seed: int = 0) -> str:
    """Which constraints a pick follows: per instruction group (the id before ``:``, e.g.
    ``length_constraints``), how often each row's pick out of N follows an instruction of that
    group (strict), beside random (the pool's mean) and the pool's best; same ties rule as the
    table (a seeded choice among the top scores)."""
    import random as _random

    from fliprm.judges import top_indices

    verdicts, _ = _verdicts(pools, name)
    scores = {row: _read_scores(_score_path(results, row, name)) for row in rows}
    groups: dict[str, dict[str, list[float]]] = {}
    for p in pools:
        ids = [f"{p['key']}|{k}" for k in range(len(p["responses"]))]
        if p["key"] not in verdicts or not all(i in scores[r] for r in rows for i in ids):
            continue
        v = verdicts[p["key"]]
        picks = {}
        for row in rows:
            top = top_indices([scores[row][i]["score"] for i in ids])
            picks[row] = top[0] if len(top) == 1 else _random.Random(
                f"{seed}|{p['key']}|{len(ids)}").choice(top)
        lengths = [len(r) for r in p["responses"]]
        picks["longest"] = lengths.index(max(lengths))
        for j, inst in enumerate(p["instruction_id_list"]):
            g = groups.setdefault(inst.split(":")[0], {})
            outs = [float(c["inst_strict"][j]) for c in v]
            g.setdefault("random", []).append(sum(outs) / len(outs))
            g.setdefault("oracle", []).append(max(outs))
            for row, k in picks.items():
                g.setdefault(row, []).append(outs[k])
    cols = [*rows, "longest", "random", "oracle"]
    lines = [f"### {name}: instruction-level strict pass rate of the pick, by instruction group",
             "", "| group | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g in sorted(groups, key=lambda g: -len(groups[g]["random"])):
        d = groups[g]
        cells = [f"{100 * sum(d[c]) / len(d[c]):.0f}" for c in cols]
        lines.append(f"| {g} | {len(d['random'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as (K, N) with 0 <= K < N.

    >>> _shard("1/2")
    (1, 2)
    """
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard: K/N, not {text!r}") from None
    if not 0 <= k < n:
        raise SystemExit(f"--shard: need 0 <= K < N, not {text!r}")
    return k, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="ifeval,ifbench")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"scoring rows: {', '.join(ROWS)}")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--backend", default=None, help="backend spec (default: embedded; fake for "
                    "a dry run)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads per row")
    ap.add_argument("--slots", type=int, default=8,
                    help="llama.cpp slots (calls in flight): a pool's candidates together")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each set")
    ap.add_argument("--shard", default=None, metavar="K/N",
                    help="score only every N-th prompt from the K-th (0-based): N processes on "
                    "N cores, each with its own --results folder (then --merge it)")
    ap.add_argument("--merge", type=Path, default=None, metavar="DIR",
                    help="append DIR's scores (a --shard run's --results folder) to --results' "
                    "for --sets and --rows; scores nothing")
    ap.add_argument("--seed", type=int, default=0, help="tie-break seed")
    ap.add_argument("--report", action="store_true", help="print the table, score nothing")
    ap.add_argument("--by-instruction", action="store_true",
                    help="with --report: pass rates per instruction group (which constraints "
                    "each pick follows)")
    a = ap.parse_args(argv)
    sets = [s.strip() for s in a.sets.split(",") if s.strip()]
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    bad = [s for s in sets if s not in SETS] + [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown set/row {', '.join(bad)}; sets: {', '.join(SETS)}; rows: "
                         f"{', '.join(ROWS)}")
    for name in sets:
        pools = load_pools(a.results / f"candidates-{name}.jsonl", a.limit)
        if a.merge is not None:  # every pool: a merged record is checked whatever its shard
            merge_scores(a.merge, a.results, name, rows, pools)
            continue
        if a.shard and not a.report:
            k, n = _shard(a.shard)
            pools = pools[k::n]
        if not a.report:
            # the report leaves a prompt without a verdict out: scoring it is model time lost
            verdicts, _ = _verdicts(pools, name)
            if skipped := [p["key"] for p in pools if p["key"] not in verdicts]:
                print(f"{name}: {len(skipped)} prompt(s) not scored, a checker cannot give a "
                      f"verdict: {', '.join(skipped)}", file=sys.stderr)
            pools = [p for p in pools if p["key"] in verdicts]
        if a.report:
            text, s = report_set(name, pools, a.results, rows, seed=a.seed)
            print(text)
            if a.by_instruction:
                print(by_instruction(name, pools, a.results, rows, seed=a.seed))
            (a.results / f"report-{name}.json").write_text(strict_json(s), encoding="utf-8")
            continue
        asyncio.run(score_sets(rows, name, pools, a.results, backend=a.backend,
                               threads=a.threads, slots=a.slots))


if __name__ == "__main__":
    main()
