"""Shared helpers for the bench scripts: the Wilson interval, peak RSS, load average, tables.

The data sets are loaded by ``sets.py``; bootstrap CIs, paired differences and the RewardBench 2
tie rule come from ``fliprm.eval`` (``fliprm.eval.stats.bootstrap_ci`` / ``paired_diff``,
``fliprm.eval.rb2_scoring.item_credit`` with ``fliprm.judges.top_indices``), so a bench number
and an ``fliprm eval`` number are computed the same way.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["load_average", "peak_rss_mb", "print_table", "wilson_ci"]


def wilson_ci(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (``successes`` may be fractional from ties).

    >>> tuple(round(x, 3) for x in wilson_ci(8, 10))
    (0.49, 0.943)
    """
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``ru_maxrss`` is KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1024 * 1024)


def load_average() -> str:
    """``uptime``-style load averages: the CPU is shared, so every number needs this next to it."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"
    except OSError:  # pragma: no cover
        return "n/a"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table with rich (falls back to plain text if rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a core dependency
        print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(str(c) for c in r))
        return
    table = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for r in rows:
        table.add_row(*(str(c) for c in r))
    Console(width=max(160, Console().width)).print(table)
