"""What produced a report: version, date, command, machine, backend, total time.

Every report (``report.md``, ``results.json``, ``bon_report.md``, ``bon_results.json``) starts
with this block, and a ``-b fake`` run says on its first line that it is not a real result.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._version import __version__

__all__ = ["DRY_RUN", "dataset_name", "header_lines", "run_info", "settings_block"]

DRY_RUN = "DRY RUN with the fake backend: not a real result"


def run_info(
    *, backend: str | None, seconds: float, command: Sequence[str] | None = None,
    started: datetime | None = None,
) -> dict[str, Any]:
    """The provenance of a run; ``backend`` is its kind (``fake`` marks a dry run, None: no
    model was used).

    >>> info = run_info(backend="fake", seconds=1.5, command=["fliprm", "eval"])
    >>> info["dry_run"], info["command"], info["total_seconds"]
    (True, 'fliprm eval', 1.5)
    """
    argv = list(command) if command is not None else ["fliprm", *sys.argv[1:]]
    when = started or datetime.now(UTC)
    return {
        "fliprm": __version__,
        "date_utc": when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(argv),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "backend": backend or "none (no model needed)",
        "dry_run": backend == "fake",
        "total_seconds": round(seconds, 1),
    }


def header_lines(title: str, info: dict[str, Any] | None, meta: dict[str, Any]) -> list[str]:
    """Markdown: the dry-run label (first line), the title, then provenance and the other
    ``meta`` entries as a list (``settings`` is left to :func:`settings_block`)."""
    lines = []
    if info and info.get("dry_run"):
        lines += [f"**{DRY_RUN}.**", ""]
    lines += [f"# {title}", ""]
    if info:
        m = info["machine"]
        lines += [
            f"- fliprm {info['fliprm']}, {info['date_utc']}, total time {info['total_seconds']} s",
            f"- command: `{info['command']}`",
            f"- machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}",
            f"- backend: {info['backend']}",
        ]
    lines += [f"- {k}: `{v}`" for k, v in meta.items() if k not in ("settings", "run")]
    return lines + [""]


def settings_block(settings: Any) -> list[str]:
    """A ``## Settings`` section holding ``settings`` as a fenced JSON block."""
    if not settings:
        return []
    return ["## Settings", "", "```json", json.dumps(settings, indent=2, sort_keys=True,
                                                   default=str), "```", ""]


def dataset_name(data: str | Path | None, hub: str | None = None) -> str:
    """A short name for titles: the hub name, or the file's stem.

    >>> dataset_name("runs/alpacaeval_pref4.jsonl"), dataset_name(None, "RewardBench 2")
    ('alpacaeval_pref4', 'RewardBench 2')
    """
    if data is None:
        return hub or "data"
    p = Path(str(data))
    return p.stem if p.suffix else p.name or str(data)
