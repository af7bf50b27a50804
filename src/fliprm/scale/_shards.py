"""Deterministic shards of an input file, and atomic shard output. No Ray in here.

A shard is a fixed block of input rows: JSONL physical lines ``[k*S + 1, (k+1)*S]`` or parquet
rows ``[k*S, (k+1)*S)``. The split depends only on the file and ``shard_size``, so a rerun
finds the same shards, and a shard whose ``shard-00012.parquet`` exists is finished: it was
written to a temporary name and renamed, so it is never half there. Each shard file records
its identity (the plan's fingerprint, its index and its block's first and last input line):
a file that is not its own block of this plan (copied over another, left by another run) is
redone, never trusted.

>>> plan = plan_shards("pairs.jsonl", shard_size=1000)  # doctest: +SKIP
>>> [s.index for s in plan.shards if not shard_path("out", s.index).exists()]  # doctest: +SKIP
[3, 7]
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..batch import Fields, record_to_args
from ..errors import ConfigError, InputError
from ..records import compare_manifests, input_identity, manifest_problem
from ..result import FlipResult

__all__ = [
    "PlanLock", "Shard", "ShardPlan", "plan_fingerprint", "plan_shards", "read_shard",
    "shard_identity", "shard_path", "write_shard",
]

PLAN_FILE = "_plan.json"


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of the input (JSONL: 0-based physical line indices)."""

    index: int
    start: int
    stop: int
    offset: int  # JSONL: byte offset of line ``start``; parquet: unused (0)
    rows: int  # rows this shard yields (JSONL: non-blank lines)


@dataclass
class ShardPlan:
    input: str
    kind: str  # "jsonl" | "parquet"
    shard_size: int
    total_rows: int
    shards: list[Shard]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        raise ConfigError("the Ray path reads JSONL or parquet; convert the CSV first")
    return "jsonl"


def plan_shards(path: str | Path, shard_size: int, *, limit: int | None = None) -> ShardPlan:
    """Split ``path`` into shards of ``shard_size`` rows (one pass over a JSONL file)."""
    path = Path(path)
    if shard_size < 1:
        raise ConfigError("shard_size must be >= 1")
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    kind = _kind(path)
    shards: list[Shard] = []
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            n = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{path}: not a readable parquet file ({first})") from None
        n = n if limit is None else min(n, limit)
        for k, a in enumerate(range(0, n, shard_size)):
            b = min(a + shard_size, n)
            shards.append(Shard(k, a, b, 0, b - a))
        return ShardPlan(str(path), kind, shard_size, n, shards)
    # JSONL: remember where each shard starts so a worker seeks there instead of rescanning.
    starts: list[tuple[int, int]] = []  # (first line, byte offset) per shard
    counts: list[int] = []
    total = offset = line = 0
    with open(path, "rb") as f:
        for raw in f:
            if limit is not None and total >= limit:
                break
            if line % shard_size == 0:
                starts.append((line, offset))
                counts.append(0)
            if raw.strip():
                counts[-1] += 1
                total += 1
            offset += len(raw)
            line += 1
    for k, ((first, off), n) in enumerate(zip(starts, counts)):
        shards.append(Shard(k, first, min(first + shard_size, line), off, n))
    return ShardPlan(str(path), kind, shard_size, total, shards)


def _parse_line(lineno: int, raw: bytes) -> dict[str, Any] | InputError:
    # Same checks and messages as records.read_records, so both paths report bad lines alike.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InputError(f"line {lineno}: invalid UTF-8 at byte {exc.start}")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return InputError(f"line {lineno}: broken JSON: {exc}")
    except RecursionError:
        return InputError(f"line {lineno}: JSON nested too deeply")
    if not isinstance(obj, dict):
        return InputError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _raw_rows(plan: ShardPlan, shard: Shard) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    if plan.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(plan.input)
        first = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            lo, hi = max(shard.start, first), min(shard.stop, first + n)
            if lo < hi:
                table = pf.read_row_group(g).slice(lo - first, hi - lo)
                yield from enumerate(table.to_pylist(), start=lo + 1)
            first += n
        return
    with open(plan.input, "rb") as f:
        f.seek(shard.offset)
        for lineno in range(shard.start + 1, shard.stop + 1):
            raw = f.readline()
            if raw.strip():
                yield lineno, _parse_line(lineno, raw)


def read_shard(plan: ShardPlan, shard: Shard, flds: Fields) -> list[dict[str, Any]]:
    """The shard's rows as ``{shard, id, line, args, error}``, ready for the scorer.

    ``args`` is the JSON of ``[instruction_or_messages, response, context]``: one string column
    keeps the Arrow schema fixed whatever shape the input fields have.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line, rec in _raw_rows(plan, shard):
        row: dict[str, Any] = {"shard": shard.index, "id": None, "line": line,
                               "args": None, "error": None}
        if isinstance(rec, InputError):
            row["error"] = str(rec)
            out.append(row)
            continue
        raw_id = rec.get(flds.id)
        item_id = str(raw_id) if raw_id not in (None, "") else None
        row["id"] = item_id
        if item_id is not None and item_id in seen:  # caught within a shard (no global state)
            row["error"] = f"line {line}: duplicate id {item_id!r}"
        else:
            if item_id is not None:
                seen.add(item_id)
            try:
                # ASCII escapes: a lone surrogate in any field must stay this row's problem
                row["args"] = json.dumps(record_to_args(rec, flds), ensure_ascii=True, default=str)
            except InputError as exc:
                row["error"] = f"line {line}: {exc}"
            except RecursionError:  # parsed, but too deep to write back as JSON
                row["error"] = f"line {line}: JSON nested too deeply"
        out.append(row)
    return out


# ---- output ---------------------------------------------------------------------------------

def result_schema() -> Any:
    """Arrow schema of a shard: ``id``, ``line`` and every FlipResult field, fixed types.

    Fixed so an all-error shard (every reward null) has the same column types as the others;
    ``extra`` (a free-form dict) is stored as a JSON string.
    """
    import pyarrow as pa

    cols = [pa.field("id", pa.string()), pa.field("line", pa.int64())]
    for f in fields(FlipResult):
        t = str(f.type)
        if t in ("float | None", "float"):
            typ = pa.float64()
        elif t == "int":
            typ = pa.int64()
        elif t == "bool":
            typ = pa.bool_()
        else:
            typ = pa.string()
        cols.append(pa.field(f.name, typ))
    return pa.schema(cols)


def result_row(item_id: str, line: int, res: FlipResult) -> dict[str, Any]:
    """One output row, the single-machine record (``id``, ``line``, ``to_dict()``) flattened."""
    d = asdict(res)
    d["extra"] = json.dumps(d["extra"], ensure_ascii=False, default=str) if d["extra"] else None
    return {"id": item_id, "line": line, **d}


def shard_path(output_dir: str | Path, index: int) -> Path:
    return Path(output_dir) / f"shard-{index:05d}.parquet"


#: the parquet schema metadata key that holds a shard's identity
IDENTITY_KEY = b"fliprm.shard"


def shard_identity(fingerprint: str, shard: Shard) -> dict[str, Any]:
    """What a shard file must record to be trusted: the plan and the block it belongs to.

    >>> shard_identity("ab12", Shard(index=1, start=2, stop=4, offset=0, rows=2))
    {'plan': 'ab12', 'index': 1, 'first_line': 3, 'last_line': 4}
    """
    return {"plan": fingerprint, "index": shard.index, "first_line": shard.start + 1,
            "last_line": shard.stop}


def write_shard(output_dir: str | Path, index: int, rows: list[dict[str, Any]],
                *, identity: dict[str, Any] | None = None) -> Path:
    """Write one shard (rows sorted by line) to a temp file, then rename it into place.

    ``identity`` (:func:`shard_identity`) goes into the file's schema metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: r["line"])
    schema = result_schema()
    if identity is not None:
        schema = schema.with_metadata({IDENTITY_KEY: json.dumps(identity, sort_keys=True)})
    table = pa.Table.from_pylist(rows, schema=schema)
    final = shard_path(output_dir, index)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, final)  # atomic on POSIX: a reader sees the whole shard or none of it
    return final


def plan_fingerprint(meta: dict[str, Any]) -> str:
    """A short hash of what makes a shard's rows valid: the input's content, the split and the
    settings (not the input's path: a moved file is the same input)."""
    ident = meta.get("input") or {}
    key = {"input": {"sha256": ident.get("sha256"), "size": ident.get("size")},
           **{k: meta.get(k) for k in ("shard_size", "total_rows", "settings")}}
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class PlanLock:
    """The output folder's ``_plan.json``: held under an exclusive lock for the whole run (a
    second run into the folder is refused), it records the input's identity (path, size,
    sha256), the shard size and the reward's settings; a rerun with any other is refused, and
    so are shards in a folder whose plan is missing, empty or damaged (nothing says what they
    belong to)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / PLAN_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise ConfigError(f"{output_dir} is being written by another fliprm run (locked); "
                              "wait for it, or use another output folder") from None

    def _read(self) -> dict[str, Any] | None:
        size = os.fstat(self.fd).st_size
        raw = os.pread(self.fd, size, 0) if size else b""
        shards = next(self.path.parent.glob("shard-*.parquet"), None)
        if not raw.strip():
            if shards is not None:
                # a deleted or emptied plan: any input or settings would "resume" these shards
                raise ConfigError(
                    f"{self.path.parent} holds shards ({shards.name}, ...) but no valid "
                    f"{self.path.name} (missing or empty), so nothing says which input and "
                    "settings they belong to: use a new output folder, or --force to start "
                    "this one over")
            return None  # a new folder (or a run killed before its plan was written)
        try:
            old = json.loads(raw)
        except (ValueError, RecursionError):
            old = None
        problem = "not a JSON object" if not isinstance(old, dict) else manifest_problem(old)
        if problem is None:
            assert isinstance(old, dict)
            missing = [k for k in ("input", "settings", "shard_size", "total_rows") if k not in old]
            problem = f"field {missing[0]!r} is missing" if missing else None
        if problem is not None:
            raise ConfigError(f"{self.path} is damaged ({problem}); no valid {self.path.name}, "
                              "so the shards next to it cannot be trusted: use a new output "
                              "folder, or --force")
        return old

    def check(self, plan: ShardPlan, settings: dict[str, Any], *, force: bool = False) -> str:
        """Refuse a folder of another run, record this run's plan; returns the plan's
        fingerprint (:func:`plan_fingerprint`), which every shard written for it records."""
        ident = input_identity(plan.input)
        meta = {"input": ident, "shard_size": plan.shard_size, "total_rows": plan.total_rows,
                "shards": len(plan.shards), "settings": settings}
        fingerprint = plan_fingerprint(meta)
        if force:
            for f in self.path.parent.glob("shard-*.parquet"):
                f.unlink()
        old = None if force else self._read()
        if old is not None:
            how = "use a new output folder, or --force to start this one over"
            compare_manifests(old, meta, str(self.path.parent), how=how)
            for key in ("shard_size", "total_rows"):
                if old.get(key) != meta[key]:
                    raise ConfigError(f"{self.path.parent} holds a run with another {key} "
                                      f"({old.get(key)!r} != {meta[key]!r}); {how}")
            if old.get("fingerprint") == fingerprint:
                return fingerprint
            # same run, recorded by an older fliprm (or the file moved): record the fingerprint
        blob = json.dumps({**meta, "fingerprint": fingerprint}, indent=2, default=str).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, blob, 0)
        os.fsync(self.fd)
        return fingerprint

    def release(self) -> None:
        os.close(self.fd)
