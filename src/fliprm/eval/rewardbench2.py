"""RewardBench 2 with any judge: run, score as the official code does, write a report.

>>> import asyncio
>>> from fliprm.eval.rb2_data import RB2Item
>>> from fliprm.judges import LongestJudge
>>> item = RB2Item("1", "Say hi.", ["Hello there!"], ["hi", "yo", "hey"], "Focus")
>>> recs = asyncio.run(arun_rewardbench2([item], lambda m, s: LongestJudge(seed=s), ["longest"]))
>>> recs[0]["credit"]
1.0
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._common import (
    JudgeFactory,
    RecordSink,
    failure_kind,
    failure_message,
    identify_judges,
    words,
)
from .rb2_data import RB2Item
from .rb2_scoring import item_credit

__all__ = ["METHODS", "arun_rewardbench2", "record_key"]

#: what `fliprm eval rewardbench2` runs by default (its --methods default)
#: the default judges: the library's default reward first (flip-pmi), then the paper's F1
METHODS = ("flip-pmi", "flip", "pointwise", "pairwise", "listwise", "longest")
#: k^2 pairwise calls or one prompt holding 11-38 answers: too costly / too long for Ties
NO_TIES = ("pairwise", "listwise")


def record_key(method: str, run: int, item_id: str) -> str:
    """The resume key: one record per (method, run, item)."""
    return f"{method}|{run}|{item_id}"


def _record(method: str, run: int, seed: int, item: RB2Item, j: Any) -> dict[str, Any]:
    ties = item.subset == "Ties"
    lens = [words(c) for c in item.candidates]
    error = failure_message(j)
    return {
        "id": record_key(method, run, item.id), "method": method, "run": run, "seed": seed,
        "item_id": item.id, "subset": item.subset, "num_correct": item.num_correct,
        "n_candidates": len(item.candidates),
        # a failed call leaves no verdict: an error record (redone by --retry-errors), never
        # the 1/k credit of a tie. Ties items have no per-item credit (the margins formula).
        "error": error,
        "error_kind": failure_kind(j),
        "credit": None if ties or error else item_credit(j.top, item.num_correct),
        "scores": j.scores, "top": j.top, "pick": j.pick, "tie": j.tie,
        "parse_failures": j.parse_failures, "calls": j.calls, "prompt_tokens": j.prompt_tokens,
        "completion_tokens": j.completion_tokens, "seconds": round(j.seconds, 3),
        "errors": j.errors, "chosen_words": lens[0], "mean_words": sum(lens) / len(lens),
        "candidate_words": lens,  # per answer, in candidate order: the reward-by-length table
        "details": j.details,
    }


async def arun_rewardbench2(
    items: Sequence[RB2Item],
    make_judge: JudgeFactory,
    methods: Sequence[str],
    *,
    runs: int = 1,
    seed: int = 0,
    out: str | Path | None = None,
    concurrency: int = 1,
    progress: Callable[[str], None] | None = None,
    input_identity: dict[str, Any] | None = None,
    force: bool = False,
    retry_errors: bool = False,
    on_todo: Callable[[int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Judge every item with every method, ``runs`` times (run r uses seed ``seed + r``).

    With ``out`` (a JSONL path) each record is appended as soon as it is done, and records
    already there are skipped, so an interrupted run resumes. A record whose judge calls
    failed has an ``error`` (and no credit); it counts as done unless ``retry_errors``, which
    redoes the failed records of these methods, runs and items (others are left alone). Each
    method's settings (and ``input_identity``, the data's) are recorded beside it: a rerun may
    add methods, but a method run again with other settings, or on other data, is refused
    (``force`` starts the file over). Returns the new records only.
    ``concurrency`` items are judged at once (1 suits the single-slot embedded model and keeps
    the per-item seconds honest). ``on_todo(n)`` is told how many (method, run, item) this pass
    will judge before the first starts, ``on_record(record)`` each finished record (for a
    progress display); ``progress`` gets one text line per record.
    """
    judges = {(m, r): make_judge(m, seed + r) for m in methods for r in range(runs)}
    await identify_judges(judges.values())
    selected, ids = set(methods), {it.id for it in items}

    def redo(rec: dict[str, Any]) -> bool:
        # only this selection's failures: others would be dropped here and not redone
        return (rec.get("method") in selected and rec.get("item_id") in ids
                and rec.get("run", 0) < runs)

    sink = RecordSink(out, settings={m: judges[(m, 0)].identity() for m in methods},
                      input_identity=input_identity, merge=True, force=force,
                      retry_errors=redo if retry_errors else False, on_record=on_record)
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(judge: Any, method: str, run: int, item: RB2Item, total: int) -> None:
        async with sem:
            j = await judge.arank(item.prompt, item.candidates)
        rec = _record(method, run, seed + run, item, j)
        sink.add(rec)
        if progress:
            credit = "-" if rec["credit"] is None else f"{rec['credit']:.2f}"
            progress(f"[{method} run {run}] {len(sink.new)} done, {total} this pass: {item.id} "
                     f"credit={credit} {j.seconds:.1f}s")

    todos = {(method, run): [it for it in items if record_key(method, run, it.id) not in sink.done
                             and not (it.subset == "Ties" and method in NO_TIES)]
             for method in methods for run in range(runs)}
    if on_todo:
        on_todo(sum(len(t) for t in todos.values()))
    try:
        for (method, run), todo in todos.items():
            judge = judges[(method, run)]
            await asyncio.gather(*(one(judge, method, run, it, len(todo)) for it in todo))
    finally:
        sink.close()
    return sink.new


def stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
