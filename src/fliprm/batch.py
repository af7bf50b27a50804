"""Scoring a whole file: one output line per input line, resumable, bad lines reported.

This is the single-machine path behind ``fliprm score INPUT -o OUTPUT``; the Ray path writes
the same record schema.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ErrorKind, InputError
from .outputs import finalize_output, kept_columns, output_format, working_path
from .records import ResultWriter, input_identity, read_records
from .result import FlipResult
from .reward import FlipReward

__all__ = ["Fields", "Summary", "score_file"]


@dataclass(frozen=True)
class Fields:
    """Names of the input columns."""

    id: str = "id"
    instruction: str = "instruction"
    response: str = "response"
    context: str = "context"
    messages: str = "messages"


@dataclass
class Summary:
    total: int = 0
    scored: int = 0
    skipped: int = 0
    errors: int = 0
    parse_failures: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reward_sum: float = 0.0
    elapsed_s: float = 0.0
    first_errors: list[str] = field(default_factory=list)
    #: error records already in the output from earlier runs (kept; --retry-errors redoes them)
    errors_before: int = 0
    #: ``errors`` by ``error_kind`` (see :data:`fliprm.errors.ErrorKind`)
    error_kinds: Counter[str] = field(default_factory=Counter)
    #: ``errors_before`` by kind; "unknown" for records written before results had a kind
    error_kinds_before: Counter[str] = field(default_factory=Counter)

    @property
    def errors_total(self) -> int:
        """Error records in the output now: this run's and earlier ones'."""
        return self.errors + self.errors_before

    @property
    def mean_reward(self) -> float | None:
        ok = self.scored - self.errors
        return self.reward_sum / ok if ok > 0 else None

    @property
    def items_per_s(self) -> float:
        return self.scored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, rec: dict[str, Any]) -> None:
        self.scored += 1
        if rec.get("error"):
            self.errors += 1
            self.error_kinds[str(rec.get("error_kind") or "unknown")] += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(str(rec["error"]))
            return
        self.reward_sum += float(rec.get("reward") or 0.0)
        self.parse_failures += 0 if rec.get("parse_ok", True) else 1
        self.cache_hits += 1 if rec.get("cached") else 0
        self.prompt_tokens += int(rec.get("prompt_tokens") or 0)
        self.completion_tokens += int(rec.get("completion_tokens") or 0)


def record_to_args(rec: dict[str, Any], fields: Fields) -> tuple[Any, Any, Any]:
    """Pick (instruction-or-messages, response, context) out of an input record."""
    if fields.messages in rec and fields.instruction not in rec:
        msgs = rec[fields.messages]
        if not isinstance(msgs, list):
            # a string here would otherwise be scored as if it were the instruction
            raise InputError(
                f"field {fields.messages!r} must be a list of chat messages, "
                f"got {type(msgs).__name__}"
            )
        return msgs, rec.get(fields.response), rec.get(fields.context)
    if fields.instruction not in rec:
        raise InputError(
            f"field {fields.instruction!r} is missing (or give a {fields.messages!r} column)"
        )
    if fields.response not in rec:
        raise InputError(f"field {fields.response!r} is missing")
    return rec[fields.instruction], rec[fields.response], rec.get(fields.context)


def _error_record(item_id: Any, line: int, msg: str, kept: dict[str, Any] | None = None,
                  kind: ErrorKind = "bad_input") -> dict[str, Any]:
    return {"line": line, "id": item_id, **(kept or {}),
            **FlipResult(reward=None, error=msg, error_kind=kind).to_dict()}


def _record(item_id: Any, line: int, res: FlipResult,
            kept: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"line": line, "id": item_id, **(kept or {}), **res.to_dict()}


#: output fields a kept input column must not overwrite (it is written as ``input.<name>``)
_RESERVED = ("line", "id", *FlipResult.__dataclass_fields__)


def _column_sets(path: Path, limit: int | None) -> Iterator[Any]:
    """The columns of a parquet or CSV file (one header; the rows are not read: a big parquet
    file would be loaded twice), or each JSONL row."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("reading parquet needs pyarrow: pip install 'fliprm[files]'") from None
        yield dict.fromkeys(pq.read_schema(path).names)
        return
    for _, rec in _limited(read_records(path), limit if suffix != ".csv" else 1):
        yield rec


def check_columns(path: Path, fields: Fields, keep: Sequence[str] | str | None = None,
                  limit: int | None = None) -> None:
    """Refuse, before any scoring, an input in which no row has a required column (or a column
    ``keep`` names): that is a wrong ``--*-field`` flag, not one bad line per row.

    Rows with a broken line are skipped; a file with no readable row is left to the per-line
    errors. JSONL rows may differ in their keys, so a column counts as present if any row has it
    (the scan stops as soon as every column was seen, usually on the first row).
    """
    need = {"instruction": {fields.instruction, fields.messages},
            "response": {fields.response, fields.messages}}
    wanted = [] if keep in (None, "all") else list(keep or [])
    missing = {**need, **{f"kept {k}": {k} for k in wanted}}
    seen: set[str] = set()
    any_row = False
    for rec in _column_sets(path, limit):
        if isinstance(rec, InputError):
            continue
        any_row = True
        seen.update(rec)
        missing = {k: v for k, v in missing.items() if not v & set(rec)}
        if not missing:
            return
    if not any_row:
        return
    cols = ", ".join(sorted(seen)) or "(none)"
    what = next(iter(missing))
    if what.startswith("kept "):
        raise ConfigError(f"--keep-columns: {path} has no column {what[5:]!r} (columns: {cols})")
    flag = fields.instruction if what == "instruction" else fields.response
    raise ConfigError(
        f"{path} has no {flag!r} column (columns: {cols}); name the {what} column with "
        f"--{what}-field" + (f" or give a {fields.messages!r} column" if what == "instruction" else "")
    )


def _user_id(rec: dict[str, Any], fields: Fields) -> Any:
    raw = rec.get(fields.id)
    return None if raw in (None, "") else str(raw)


async def score_file(
    reward: FlipReward,
    input_path: str | Path,
    output_path: str | Path,
    *,
    fields: Fields = Fields(),
    retry_errors: bool = False,
    force: bool = False,
    chunk_size: int = 64,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    limit: int | None = None,
    input_label: str | None = None,
    keep_columns: Sequence[str] | str | None = None,
) -> Summary:
    """Score every line of ``input_path`` into ``output_path`` (JSONL), one record per line.

    Records are keyed by their input ``line`` (the user's ``id`` is kept beside it, or null),
    so a rerun skips the finished lines. ``line`` is the 1-based line of a JSONL file, the
    1-based data row of a parquet file, and the CSV row + 1 (the header is line 1).
    ``keep_columns`` (a list of input columns, or ``"all"``) copies input columns into each
    record. The output's suffix picks its format (``.jsonl``, ``.csv``, ``.parquet``); results
    are appended to a JSONL working file while the run goes (see :mod:`fliprm.outputs`) and
    the final file, sorted by ``line``, is written when the run completes. A required column
    that no row has is a :class:`~fliprm.errors.ConfigError` before any scoring. The reward's
    settings and the input's identity are recorded beside the output (for an HTTP judge, with
    what its server says it serves: asked first, a :class:`~fliprm.errors.BackendError` if it
    cannot be reached): a rerun with other settings, another model under the same served name
    or another input is refused (:class:`~fliprm.errors.ConfigError`) unless ``force`` starts
    the output over; an input that only grew (rows appended) resumes.

    >>> import asyncio  # doctest: +SKIP
    >>> asyncio.run(score_file(FlipReward(), "pairs.jsonl", "scores.jsonl")).mean_reward  # doctest: +SKIP
    """
    inp, final = Path(input_path), Path(output_path)
    output_format(final)  # an unknown suffix is refused before any work
    out = working_path(final)
    for o in (out, final):
        # samefile: a symlink or a hard link to the input is the input too
        if o.exists() and inp.exists() and os.path.samefile(o, inp):
            raise ConfigError(f"the output {o} is the input file: write the results elsewhere")
    records = read_records(inp)  # a corrupt parquet input is refused before the output is touched
    keep: Sequence[str] | str | None = (
        "all" if keep_columns == "all" else [k for k in (keep_columns or []) if k != fields.id])
    check_columns(inp, fields, keep, limit)
    ident = input_identity(inp)
    if input_label:
        ident["path"] = input_label
    # an HTTP judge's identity includes what its server serves: a model swapped under the same
    # name is another reward, and its resume is refused like any other settings change
    await reward.aidentify()
    manifest = {"input": ident, "fingerprint": reward.fingerprint(),
                "settings": {"reward": reward.identity(), "fields": asdict(fields)}}
    if keep:  # rows with and without the kept columns would not mix in one table
        # an object, as every settings entry is (manifest_problem refuses other shapes)
        manifest["settings"]["keep_columns"] = {"columns": keep}
    summary = Summary()
    t0 = time.perf_counter()
    with ResultWriter(out, key_field="line", retry_errors=retry_errors, manifest=manifest,
                      force=force, input_lines=True) as writer:
        summary.errors_before = writer.errors_before
        summary.error_kinds_before.update(writer.error_kinds_before)
        summary.first_errors.extend(writer.first_errors_before)
        seen: dict[str, int] = {}

        def emit(rec: dict[str, Any]) -> None:
            writer.write(rec)
            summary.add(rec)
            if on_item:
                on_item(rec)

        pending: list[tuple[Any, int, tuple[Any, Any, Any], dict[str, Any]]] = []

        async def flush() -> None:
            if not pending:
                return
            instr = [a[0] for _, _, a, _ in pending]
            resp = [a[1] for _, _, a, _ in pending]
            ctx = [a[2] for _, _, a, _ in pending]
            # errors name the item by its input line, written once by the reward
            async for i, res in reward.ascore_stream(instr, resp, ctx,
                                                     where=lambda i: f"line {pending[i][1]}"):
                item_id, line, _, kept = pending[i]
                emit(_record(item_id, line, res, kept))
            pending.clear()

        for line, rec in _limited(records, limit):
            summary.total += 1
            item_id = None if isinstance(rec, InputError) else _user_id(rec, fields)
            # duplicates are found across the whole file, finished lines included
            first = seen.setdefault(item_id, line) if item_id is not None else line
            if str(line) in writer.done:
                summary.skipped += 1
                continue
            if isinstance(rec, InputError):
                emit(_error_record(None, line, str(rec)))
                continue
            kept = kept_columns(rec, keep, _RESERVED, fields.id)
            if first != line:
                emit(_error_record(item_id, line, f"line {line}: duplicate id {item_id!r} "
                                                   f"(first on line {first})", kept))
                continue
            try:
                args = record_to_args(rec, fields)
            except InputError as exc:
                emit(_error_record(item_id, line, f"line {line}: {exc}", kept))
                continue
            pending.append((item_id, line, args, kept))
            if len(pending) >= chunk_size:
                await flush()
        await flush()
        # still locked: no other run appends while the final file is written (write() flushes
        # every record, so the working file is complete on disk)
        finalize_output(final)
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _limited(it: Iterator[Any], limit: int | None) -> Iterator[Any]:
    for n, x in enumerate(it):
        if limit is not None and n >= limit:
            return
        yield x
