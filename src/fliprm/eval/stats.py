"""Small statistics and Markdown helpers for the evaluation reports (stdlib only)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence

__all__ = ["bold_best", "bootstrap_ci", "failed_note", "fmt", "md_table", "mean", "paired_diff", "spread",
           "strict_json"]


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def bootstrap_ci(
    groups: Sequence[Sequence[float]],
    stat: Callable[[list[list[float]]], float] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI, resampling within each group (e.g. items within a subset).

    The default statistic is the mean of the group means (RewardBench 2 averages subsets).

    >>> lo, hi = bootstrap_ci([[1, 0, 1, 1, 0, 1, 1, 0]])
    >>> 0.2 < lo < 0.625 < hi <= 1.0
    True
    """
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan")
    stat = stat or (lambda gs: mean([mean(g) for g in gs]))
    rng = random.Random(seed)
    values = sorted(
        stat([[g[rng.randrange(len(g))] for _ in g] for g in groups]) for _ in range(n_boot)
    )
    alpha = (1 - level) / 2
    return values[int(alpha * (n_boot - 1))], values[int((1 - alpha) * (n_boot - 1))]


def paired_diff(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same items, and the bootstrap CI of that mean.

    Pairing matters: with a few dozen items two unpaired CIs overlap almost always, while the
    per-item difference between two configurations is much tighter.

    >>> d, lo, hi = paired_diff([1, 1, 0, 1], [0, 1, 0, 1])
    >>> d, lo <= d <= hi
    (0.25, True)
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length ({len(a)} vs {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    lo, hi = bootstrap_ci([d], n_boot=n_boot, seed=seed, level=level)
    return mean(d), lo, hi


def spread(values: Sequence[float]) -> dict[str, float | list[float] | int]:
    """Mean, sample standard deviation, min and max of per-run values (std 0 for one run).

    >>> spread([0.5, 0.7, 0.6])["std"], spread([0.5])["std"]
    (0.1, 0.0)
    """
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {"runs": 0, "per_run": [], "mean": math.nan, "std": math.nan,
                "min": math.nan, "max": math.nan}
    m = mean(vals)
    std = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"runs": len(vals), "per_run": list(vals), "mean": m, "std": round(std, 12),
            "min": min(vals), "max": max(vals)}


def bold_best(cells: Sequence[str], values: Sequence[float | None]) -> list[str]:
    """Bold the cells whose value is the column's best (highest); ties are all bold.

    >>> bold_best(["50.0", "75.0", "-"], [0.5, 0.75, None])
    ['50.0', '**75.0**', '-']
    """
    ok = [v for v in values if v is not None and not math.isnan(v)]
    best = max(ok) if ok else None
    return [f"**{c}**" if best is not None and v is not None and not math.isnan(v)
            and math.isclose(v, best, rel_tol=0, abs_tol=1e-12) else c
            for c, v in zip(cells, values, strict=True)]


def fmt(x: float | None, digits: int = 1, pct: bool = True) -> str:
    """``0.345 -> '34.5'``; NaN/None -> ``'-'``."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x * 100:.{digits}f}" if pct else f"{x:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table.

    >>> print(md_table(["a", "b"], [[1, 2]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _finite(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def strict_json(obj: object) -> str:
    r"""JSON that every parser reads: NaN and infinities become ``null`` (Python's default
    writes ``NaN``, which is not JSON).

    >>> strict_json({"accuracy": float("nan"), "n": [1.5, float("inf")]})
    '{\n  "accuracy": null,\n  "n": [\n    1.5,\n    null\n  ]\n}'
    """
    return json.dumps(_finite(obj), indent=2, default=str, allow_nan=False)


def failed_note(failed: dict[str, int]) -> list[str]:
    """A report line naming the records left out because their judge calls failed (if any).

    >>> failed_note({"flip": 2, "longest": 0})[0][:33]
    '**Failed judge calls:** flip 2 re'
    """
    failed = {n: k for n, k in failed.items() if k}
    if not failed:
        return []
    counts = ", ".join(f"{n} {k}" for n, k in failed.items())
    note = (f"**Failed judge calls:** {counts} records have no verdict and are left out of the "
            "numbers above (rerun with `--retry-errors` to redo them).")
    return [note, ""]
