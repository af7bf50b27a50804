"""One leaderboard from several output folders of ``fliprm eval rewardbench2`` and ``fliprm
rerank`` (their ``results.json`` / ``bon_results.json``): a Markdown table per kind, best first,
with intervals, ready to paste into a paper or a README.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .stats import fmt, md_table

__all__ = ["collect", "leaderboard_markdown"]


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise ConfigError(f"{path}: not a fliprm results file (no 'methods')")
    return data


def collect(dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per (folder, method): kind (``eval`` or ``bon``), value, CI, n, spread, source,
    and ``failed``: the records whose judge calls failed (left out of the value; None in
    results written before fliprm counted them).

    A folder (or a results file named directly) without eval or rerank results is a
    :class:`~fliprm.errors.ConfigError`.
    """
    rows: list[dict[str, Any]] = []
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else [d / "results.json", d / "bon_results.json"]
        found = [f for f in files if f.is_file()]
        if not found:
            raise ConfigError(f"{d}: no results.json (fliprm eval) or bon_results.json "
                              "(fliprm rerank --label-field) in it")
        for f in found:
            s = _read(f)
            kind = "bon" if "curve" in s else "eval"
            run = (s.get("meta") or {}).get("run") or {}
            base = {"kind": kind, "source": str(d), "dataset": s.get("dataset") or "",
                    "backend": run.get("backend", ""), "date": run.get("date_utc", ""),
                    "dry_run": bool(s.get("dry_run"))}
            for method, m in s["methods"].items():
                if kind == "eval":
                    sp = m.get("runs_spread") or {}
                    rows.append({**base, "method": method, "value": _num(m.get("accuracy")),
                                 "ci": [_num(x) for x in m.get("ci") or [None, None]],
                                 "n": m.get("n_items"), "runs": m.get("runs", 1), "spread": sp,
                                 "failed": m.get("n_failed")})
                else:
                    curve = s.get("curve") or {}
                    rows.append({**base, "method": method, "value": _num(m.get("mean_label")),
                                 "ci": [_num(x) for x in m.get("ci") or [None, None]],
                                 "n": m.get("n"), "runs": 1, "spread": {},
                                 "failed": m.get("n_failed"),
                                 "random": _num((curve.get("random") or [None])[-1]),
                                 "oracle": _num((curve.get("oracle") or [None])[-1])})
    return rows


def _rank_key(r: dict[str, Any]) -> float:
    return math.inf if math.isnan(r["value"]) else -r["value"]


def _spread(sp: dict[str, Any]) -> str:
    if (sp.get("runs") or 0) < 2:
        return "-"
    return f"{fmt(sp['mean'])} ± {fmt(sp['std'])} ({fmt(sp['min'])}-{fmt(sp['max'])})"


def _failed(r: dict[str, Any]) -> str:
    return "-" if r.get("failed") is None else str(r["failed"])


def leaderboard_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown leaderboard of :func:`collect`'s rows: eval accuracy and best-of-N mean
    label in separate tables (different units), each best first. The last column counts the
    records whose judge calls failed (left out of the value; ``-``: not recorded).

    >>> rows = [{"kind": "eval", "source": "runs/a", "dataset": "rb2", "backend": "openai",
    ...          "date": "", "dry_run": False, "method": "flip", "value": 0.5, "ci": [0.4, 0.6],
    ...          "n": 10, "runs": 1, "spread": {}, "failed": 2}]
    >>> print(leaderboard_markdown(rows).splitlines()[4])
    | 1 | flip | rb2 | **50.0** [40.0-60.0] | - | 10 | openai | runs/a | 2 |
    """
    out: list[str] = []
    if any(r["dry_run"] for r in rows):
        out += ["Rows marked DRY RUN come from the fake backend: not real results.", ""]
    evals = sorted((r for r in rows if r["kind"] == "eval"), key=_rank_key)
    if evals:
        best = max((r["value"] for r in evals if not math.isnan(r["value"])), default=math.nan)
        table = []
        for i, r in enumerate(evals, 1):
            v = fmt(r["value"])
            v = f"**{v}**" if r["value"] == best else v
            table.append([i, r["method"] + (" (DRY RUN)" if r["dry_run"] else ""), r["dataset"],
                          f"{v} [{fmt(r['ci'][0])}-{fmt(r['ci'][1])}]", _spread(r["spread"]),
                          r["n"], r["backend"], r["source"], _failed(r)])
        out += ["## Accuracy (%, RewardBench 2 scoring)", "",
                md_table(["#", "method", "data", "accuracy [95% CI]",
                          "across runs: mean ± std (min-max)", "items", "backend", "folder",
                          "failed"], table), ""]
    bons = sorted((r for r in rows if r["kind"] == "bon"), key=_rank_key)
    if bons:
        best = max((r["value"] for r in bons if not math.isnan(r["value"])), default=math.nan)
        table = []
        for i, r in enumerate(bons, 1):
            v = f"{r['value']:.3f}"
            v = f"**{v}**" if r["value"] == best else v
            table.append([i, r["method"] + (" (DRY RUN)" if r["dry_run"] else ""), r["dataset"],
                          f"{v} [{r['ci'][0]:.3f}-{r['ci'][1]:.3f}]",
                          f"{r['random']:.3f} / {r['oracle']:.3f}", r["n"], r["backend"],
                          r["source"], _failed(r)])
        out += ["## Best-of-N (mean label of the pick)", "",
                md_table(["#", "method", "data", "mean label [95% CI]", "random / oracle",
                          "rows", "backend", "folder", "failed"], table), ""]
    return "\n".join(out)
