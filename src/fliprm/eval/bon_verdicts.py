"""Best-of-N against instruction checkers: how often does each method's pick pass them?

A pool is one prompt's candidates with every method's scores and every candidate's checker
verdict (a :class:`fliprm.verifiers.Verdict` as a dict)::

    {"id": "p1", "verdicts": [{"prompt_strict": .., "prompt_loose": .., "inst_strict": [..],
     "inst_loose": [..]}, ...], "scores": {"flip": [0.4, None, ...]}, "lengths": [120, 80, ...],
     "picks": {"flip": 0}}          # picks (optional): a judge's own pick out of the full pool

Metrics, IFEval's four: prompt-level strict / loose (share of prompts whose pick follows every
instruction) and instruction-level strict / loose (share of all instructions followed, pooled
over prompts). Beside the methods: ``longest`` (most characters), ``random`` (the exact
expectation of a uniform pick, so no seed) and ``oracle`` (per metric, the best candidate in the
pool). Intervals are 95% percentile bootstraps over prompts (:func:`fliprm.eval.stats.
bootstrap_ci`); differences to a reference pick are paired (the same prompts resampled).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .best_of_n import _pick_in_pool, _pools, pool_sizes
from .stats import bootstrap_ci

__all__ = ["BASELINES", "METRICS", "summarize_verified"]

METRICS = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")
BASELINES = ("longest", "random", "oracle")

#: (prompt strict, prompt loose, instructions passed strict, passed loose, instructions)
Outcome = tuple[float, float, float, float, int]


def _outcome(v: Mapping[str, Any]) -> Outcome:
    return (float(v["prompt_strict"]), float(v["prompt_loose"]), float(sum(v["inst_strict"])),
            float(sum(v["inst_loose"])), len(v["inst_strict"]))


def _rate(outs: Sequence[Outcome], metric: str) -> float:
    if not outs:
        return float("nan")
    i = METRICS.index(metric)
    if i < 2:
        return sum(o[i] for o in outs) / len(outs)
    n = sum(o[4] for o in outs)
    return sum(o[i] for o in outs) / n if n else float("nan")


def _mean_outcome(outs: Sequence[Outcome]) -> Outcome:
    k = len(outs)
    return (*(sum(o[i] for o in outs) / k for i in range(4)), outs[0][4])  # type: ignore[return-value]


def _best_outcome(outs: Sequence[Outcome]) -> Outcome:
    return (*(max(o[i] for o in outs) for i in range(4)), outs[0][4])  # type: ignore[return-value]


def _ci(items: list[Any], stat: Callable[[list[Any]], float], seed: int,
        n_boot: int) -> list[float]:
    return list(bootstrap_ci([items], lambda gs: stat(gs[0]), seed=seed, n_boot=n_boot))


def summarize_verified(
    pools: Sequence[Mapping[str, Any]],
    *,
    first_n: bool = False,
    refs: Sequence[str] = ("random",),
    seed: int = 0,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Pass rates of each method's pick (with 95% CIs), paired differences to ``refs`` and the
    curve over N = 1, 2, 4, ... (pools of N: the first N candidates with ``first_n``, else a
    seeded random subset, as in :func:`fliprm.eval.best_of_n.summarize_bon`).

    >>> v = lambda ok: {"prompt_strict": ok, "prompt_loose": ok, "inst_strict": [ok],
    ...                 "inst_loose": [ok]}
    >>> s = summarize_verified([{"id": "a", "verdicts": [v(False), v(True)], "lengths": [9, 1],
    ...                          "scores": {"m": [0.1, 0.9]}}], n_boot=10)
    >>> [s["methods"][m]["prompt_loose"]["rate"] for m in ("m", "longest", "random", "oracle")]
    [1.0, 0.0, 0.5, 1.0]
    """
    pools = [p for p in pools if p.get("verdicts")]
    if not pools:
        return {}
    n_max = min(len(p["verdicts"]) for p in pools)
    sizes = pool_sizes(n_max)
    methods = list(dict.fromkeys([*(m for p in pools for m in p["scores"]), *BASELINES]))
    # outcomes[method][size index] = one Outcome per pool
    outcomes: dict[str, list[list[Outcome]]] = {m: [] for m in methods}
    for s_i, size in enumerate(sizes):
        per: dict[str, list[Outcome]] = {m: [] for m in methods}
        for p in pools:
            outs = [_outcome(v) for v in p["verdicts"]]
            pool = (list(range(size)) if first_n
                    else _pools({"id": p["id"], "labels": outs}, sizes, seed)[s_i])
            for m in methods:
                if m == "random":
                    per[m].append(_mean_outcome([outs[i] for i in pool]))
                elif m == "oracle":
                    per[m].append(_best_outcome([outs[i] for i in pool]))
                else:
                    scores = p["scores"].get(m)
                    if scores is None and m == "longest":
                        scores = [float(x) for x in p["lengths"]]
                    if scores is None:
                        raise ValueError(f"pool {p['id']!r} has no scores for {m!r}")
                    # the judge's own pick counts only for the full pool (first_n keeps order)
                    own = p.get("picks", {}).get(m) if size == len(outs) else None
                    rec = {"id": p["id"], "labels": outs, "scores": scores, "pick": own}
                    per[m].append(outs[_pick_in_pool(rec, pool, seed)])
        for m in methods:
            outcomes[m].append(per[m])
    out: dict[str, Any] = {"n_prompts": len(pools), "sizes": sizes, "first_n": first_n,
                           "methods": {}, "curve": {}}
    for m in methods:
        full = outcomes[m][-1]
        entry: dict[str, Any] = {}
        for metric in METRICS:
            entry[metric] = {"rate": _rate(full, metric),
                             "ci": _ci(full, lambda o, k=metric: _rate(o, k), seed, n_boot)}
        entry["diff"] = {}
        for ref in refs:
            if ref == m or ref not in outcomes:
                continue
            pairs = list(zip(full, outcomes[ref][-1]))
            entry["diff"][ref] = {}
            for metric in METRICS:
                def d(ps: list[Any], k: str = metric) -> float:
                    return _rate([a for a, _ in ps], k) - _rate([b for _, b in ps], k)
                entry["diff"][ref][metric] = {"diff": d(pairs),
                                              "ci": _ci(pairs, d, seed, n_boot)}
        out["methods"][m] = entry
        out["curve"][m] = {metric: [_rate(o, metric) for o in outcomes[m]] for metric in METRICS}
    return out
