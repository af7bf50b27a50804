"""Output files of ``fliprm score``: the format the suffix names, sorted by input line.

Results are always appended crash-safely to a JSONL *working file* as items finish (that file is
what a rerun resumes from). For ``.jsonl`` the working file is the output itself; for ``.csv``
and ``.parquet`` it is ``<output>.partial.jsonl``, and the CSV/parquet file is written from it
atomically (a temporary file renamed over the output) when the run completes. The final file is
sorted by ``line``.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["OUTPUT_FORMATS", "finalize_output", "kept_columns", "output_format", "working_path"]

#: suffix -> format; no suffix (or a device such as /dev/null) is JSONL
OUTPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
                  ".pq": "parquet"}
PARTIAL_SUFFIX = ".partial.jsonl"


def output_format(path: str | Path) -> str:
    """The format ``path``'s suffix names; an unknown suffix is a one-line usage error.

    >>> output_format("scores.parquet"), output_format("scores.jsonl"), output_format("out")
    ('parquet', 'jsonl', 'jsonl')
    """
    suffix = Path(path).suffix.lower()
    if not suffix or not _regular_or_missing(Path(path)):
        return "jsonl"
    try:
        return OUTPUT_FORMATS[suffix]
    except KeyError:
        raise ConfigError(f"-o {path}: unknown output suffix {suffix!r}; use .jsonl, .csv or "
                          ".parquet") from None


def working_path(path: str | Path) -> Path:
    """Where results are appended while the run goes (the resumable record).

    >>> str(working_path("s.parquet")), str(working_path("s.jsonl"))
    ('s.parquet.partial.jsonl', 's.jsonl')
    """
    p = Path(path)
    return p if output_format(p) == "jsonl" else p.with_name(p.name + PARTIAL_SUFFIX)


def kept_columns(
    rec: dict[str, Any], keep: Sequence[str] | str | None, reserved: Sequence[str], skip: str
) -> dict[str, Any]:
    """The input columns ``keep`` names (``"all"``: every column but ``skip``), renamed
    ``input.<name>`` where the name is already an output field (``reserved``).

    >>> kept_columns({"instruction": "Hi", "reward": 3, "id": 1}, "all", ["reward"], "id")
    {'instruction': 'Hi', 'input.reward': 3}
    """
    if not keep:
        return {}
    names = [k for k in rec if k != skip] if keep == "all" else list(keep)
    return {(f"input.{k}" if k in reserved else k): rec.get(k) for k in names}


def _regular_or_missing(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return True


def _read_sorted(working: Path) -> list[dict[str, Any]]:
    rows = []
    with open(working, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                rows.append(json.loads(raw))
    return sorted(rows, key=lambda r: (int(r.get("line") or 0)))


def _cell(v: Any) -> Any:
    # a CSV cell holds text: nested values (messages, extra) become JSON, None an empty cell
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return "" if v is None else v


def _write_csv(rows: list[dict[str, Any]], tmp: Path) -> None:
    header: dict[str, None] = {}
    for r in rows:
        header.update(dict.fromkeys(r))
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header))
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v) for k, v in r.items()})


def _write_parquet(rows: list[dict[str, Any]], tmp: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("writing parquet needs pyarrow: pip install 'fliprm[files]'") from None
    header: dict[str, None] = {}
    for r in rows:
        header.update(dict.fromkeys(r))
    cols = {k: [r.get(k) for r in rows] for k in header}
    arrays = {}
    for k, vals in cols.items():
        try:
            arrays[k] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            # mixed types across rows (e.g. a kept column that is a string here, a list there)
            arrays[k] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False)
                                  for v in vals], pa.string())
    pq.write_table(pa.table(arrays) if arrays else pa.table({}), tmp)


def finalize_output(path: str | Path) -> None:
    """Write ``path`` in its format from the working file, sorted by ``line``, atomically.

    A no-op for a device (``/dev/null``) or a missing working file.
    """
    final = Path(path)
    fmt = output_format(final)
    working = working_path(final)
    if not working.is_file() or not _regular_or_missing(final):
        return
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        if fmt == "jsonl":
            raw = [ln for ln in working.read_bytes().split(b"\n") if ln.strip()]
            keys = [int(json.loads(ln).get("line") or 0) for ln in raw]
            if keys == sorted(keys):
                return  # already in input order (concurrency 1): nothing to rewrite
            # the records' own bytes, reordered: a \u escape written on purpose stays as it was
            order = sorted(range(len(raw)), key=keys.__getitem__)
            tmp.write_bytes(b"".join(raw[i] + b"\n" for i in order))
        elif fmt == "csv":
            _write_csv(_read_sorted(working), tmp)
        else:
            _write_parquet(_read_sorted(working), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        from .records import OutputError

        raise OutputError(f"cannot write {final}: {exc.strerror}") from exc
