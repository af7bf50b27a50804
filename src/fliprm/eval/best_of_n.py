"""Best-of-N reranking: a judge picks one of N candidates per prompt.

Input: JSONL/parquet rows with a prompt and a list of candidates (field names configurable).
Output: one JSONL record per row with every score and the pick (resumable). With a label
column (a list parallel to the candidates, higher is better, e.g. AlpacaEval ``preference``)
:func:`summarize_bon` reports the mean label of the picks against a random pick and the
oracle, and a curve over pool sizes n = 1, 2, 4, ... N.

Tie-break rule: the judge's ``pick`` is a seeded uniform choice among the candidates tied at
the top score (``Judgment.top``), seeded by (seed, prompt) so reruns agree.

Curve: candidate files often list candidates in a fixed order (e.g. by model), so a pool of
size n is the first n of a seeded per-row shuffle, not the first n of the file. Within a pool
the pick is the best-scored candidate, ties broken by a seeded choice; at n = N the judge's own
pick is used, so the curve's last point equals the headline number.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import require_text
from ..judges import Judge, top_indices
from ..records import read_records
from ._common import RecordSink, failure_kind, failure_message, identify_judges
from .stats import bootstrap_ci, mean

__all__ = ["arerank", "load_rows", "pool_sizes", "summarize_bon"]


def load_rows(
    path: str | Path, *, prompt_field: str = "prompt", candidates_field: str = "candidates",
    id_field: str = "id", label_field: str | None = None, limit: int | None = None,
    instructions: bool = False,
) -> list[dict[str, Any]]:
    """Rows as ``{"id", "prompt", "candidates", "labels"}``; bad rows raise InputError.

    Rows without an id get their 1-based row number. With ``instructions`` (``rerank
    --verifier``) each row must also carry the IFEval/IFBench ``instruction_id_list`` and
    ``kwargs``, kept on the row with ``where`` (the file and line, for later error messages).
    """
    rows = []
    first_seen: dict[str, str] = {}
    for n, rec in read_records(path):
        if isinstance(rec, InputError):
            raise InputError(f"{path}: {rec}")
        where = f"{path}: row {n}"
        prompt, cands = rec.get(prompt_field), rec.get(candidates_field)
        if not isinstance(prompt, str) or not isinstance(cands, list) or not cands:
            raise InputError(f"{where}: needs a string {prompt_field!r} and a non-empty list "
                             f"{candidates_field!r}")
        prompt = require_text(prompt, prompt_field, where)
        # an empty candidate is a real (bad) answer; a null or a number is bad data, not "None"
        cands = [require_text(c, f"{candidates_field}[{j}]", where, allow_empty=True)
                 for j, c in enumerate(cands)]
        labels = rec.get(label_field) if label_field else None
        if label_field and (
            not isinstance(labels, list) or len(labels) != len(cands)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in labels)
        ):
            # the report averages labels: a null or a string would crash it after all the work
            raise InputError(f"{where}: {label_field!r} must be a list of numbers as long as "
                             "the candidates")
        raw_id = rec.get(id_field)
        row_id = str(raw_id) if raw_id not in (None, "") else str(n)
        # picks are keyed by id: a duplicate would be skipped on resume and merged in the report
        if row_id in first_seen:
            raise InputError(f"{where}: duplicate id {row_id!r} (first at {first_seen[row_id]})")
        first_seen[row_id] = where
        row = {"id": row_id, "prompt": prompt, "candidates": cands, "labels": labels}
        if instructions:
            row.update(_instruction_fields(rec, path, n))
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _instruction_fields(rec: dict[str, Any], path: str | Path, n: int) -> dict[str, Any]:
    unit = "row" if Path(path).suffix.lower() in (".parquet", ".pq") else "line"
    where = f"{path}: {unit} {n}"
    ids, kwargs = rec.get("instruction_id_list"), rec.get("kwargs")
    if not isinstance(ids, list) or not isinstance(kwargs, (list, str)):
        raise InputError(f"{where}: --verifier needs 'instruction_id_list' and 'kwargs' lists "
                         "(the IFEval/IFBench schema)")
    return {"instruction_id_list": ids, "kwargs": kwargs, "where": where}


async def arerank(
    rows: Sequence[dict[str, Any]],
    judge: Judge,
    *,
    out: str | Path | None = None,
    concurrency: int = 1,
    progress: Callable[[str], None] | None = None,
    input_identity: dict[str, Any] | None = None,
    force: bool = False,
    retry_errors: bool = False,
    on_todo: Callable[[int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Judge each row's candidates; append ``{id, pick, scores, top, ...}`` records to ``out``
    (rows already there are skipped). A row whose judge calls failed is an error record
    (``error`` set, ``pick`` None); ``retry_errors`` redoes those. The judge's settings and
    ``input_identity`` are recorded beside ``out``; a rerun with others is refused (``force``
    starts it over). Returns the new records. ``on_todo(n)``: the rows this pass will judge,
    told before the first starts; ``on_record(record)``: each finished record (for a progress
    display).

    >>> from fliprm.judges import LongestJudge
    >>> asyncio.run(arerank([{"id": "1", "prompt": "Hi", "candidates": ["a", "abc"]}], LongestJudge()))[0]["pick"]
    1
    """
    await identify_judges([judge])
    row_ids = {r["id"] for r in rows}
    sink = RecordSink(out, settings={judge.name: judge.identity()},
                      input_identity=input_identity, force=force, on_record=on_record,
                      # only the rows of this run (--limit): others would not be redone
                      retry_errors=(lambda rec: rec.get("id") in row_ids)
                      if retry_errors else False)
    todo = [r for r in rows if r["id"] not in sink.done]
    if on_todo:
        on_todo(len(todo))
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(row: dict[str, Any]) -> None:
        async with sem:
            j = await judge.arank(row["prompt"], row["candidates"])
        error = failure_message(j)
        # a failed call leaves no verdict: no pick, rather than a seeded guess among "ties"
        pick = None if error else j.pick
        rec = {"id": row["id"], "method": judge.name, "error": error,
               "error_kind": failure_kind(j), "pick": pick,
               "scores": j.scores, "top": j.top, "tie": j.tie,
               "parse_failures": j.parse_failures, "calls": j.calls, "tokens": j.tokens,
               "seconds": round(j.seconds, 3), "errors": j.errors}
        if row.get("labels") is not None:
            rec["labels"] = row["labels"]
            rec["picked_label"] = row["labels"][pick] if pick is not None else None
        sink.add(rec)
        if progress:
            progress(f"[{judge.name}] {len(sink.new)}/{len(todo)} {row['id']} "
                     f"pick={rec['pick']} {j.seconds:.1f}s")

    try:
        await asyncio.gather(*(one(r) for r in todo))
    finally:
        sink.close()
    return sink.new


def pool_sizes(n: int) -> list[int]:
    """1, 2, 4, ... up to n (n itself included).

    >>> pool_sizes(8), pool_sizes(6)
    ([1, 2, 4, 8], [1, 2, 4, 6])
    """
    sizes, k = [], 1
    while k < n:
        sizes.append(k)
        k *= 2
    return sizes + [n]


def _pools(rec: dict[str, Any], sizes: Sequence[int], seed: int) -> list[list[int]]:
    order = list(range(len(rec["labels"])))
    random.Random(f"{seed}|{rec['id']}|pool").shuffle(order)
    return [order[:n] for n in sizes]


def _pick_in_pool(rec: dict[str, Any], pool: list[int], seed: int) -> int:
    if len(pool) == len(rec["labels"]) and rec.get("pick") is not None:
        return rec["pick"]
    scores = [rec["scores"][i] for i in pool]
    top = top_indices(scores)
    k = top[0] if len(top) == 1 else random.Random(f"{seed}|{rec['id']}|{len(pool)}").choice(top)
    return pool[k]


def summarize_bon(records: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Mean label of the picks per method and pool size, next to random and oracle picks.

    Random = the expected label of a uniform pick (the mean of the pool), oracle = the pool's
    best label. Records need ``labels``. Error records (failed judge calls) are left out of a
    method's numbers: ``n`` counts its scored rows and ``n_failed`` the failed ones.
    """
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("labels") is not None:
            by_method.setdefault(r["method"], []).append(r)
    if not by_method:
        return {}
    n_max = min(len(r["labels"]) for rs in by_method.values() for r in rs)
    sizes = pool_sizes(n_max)
    rows = {r["id"]: r for rs in by_method.values() for r in rs}  # every row seen
    failed = {m: sum(1 for r in rs if r.get("error")) for m, rs in by_method.items()}
    # a row whose judge calls failed has no pick: the mean label is over the scored rows,
    # with the failed count beside it (n_failed), never a guess standing in for a verdict
    by_method = {m: [r for r in rs if not r.get("error")] for m, rs in by_method.items()}
    out: dict[str, Any] = {"sizes": sizes, "curve": {}, "methods": {}, "n_rows": len(rows)}
    pools = {k: _pools(r, sizes, seed) for k, r in rows.items()}
    out["curve"]["random"] = [mean([mean([r["labels"][i] for i in pools[k][s]])
                                    for k, r in rows.items()]) for s in range(len(sizes))]
    out["curve"]["oracle"] = [mean([max(r["labels"][i] for i in pools[k][s])
                                    for k, r in rows.items()]) for s in range(len(sizes))]
    for method, rs in by_method.items():
        curve = [mean([r["labels"][_pick_in_pool(r, pools[r["id"]][s], seed)] for r in rs])
                 for s in range(len(sizes))]
        out["curve"][method] = curve
        full = [r["labels"][_pick_in_pool(r, pools[r["id"]][-1], seed)] for r in rs]
        calls = sum(r["calls"] for r in rs)
        out["methods"][method] = {
            "mean_label": mean(full), "ci": list(bootstrap_ci([full], seed=seed)), "n": len(rs),
            "n_failed": failed[method],
            "tie_rate": mean([float(r["tie"]) for r in rs]),
            "parse_failure_rate": sum(r["parse_failures"] for r in rs) / calls if calls else 0.0,
            "seconds_per_item": mean([r["seconds"] for r in rs]),
            "tokens_per_item": mean([r["tokens"] for r in rs]),
        }
    return out
