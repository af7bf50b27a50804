"""Scoring a whole file: one output line per input line, resumable, bad lines reported.

This is the single-machine path behind ``fliprm score INPUT -o OUTPUT``; the Ray path writes
the same record schema.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
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


def _error_record(item_id: Any, line: int, msg: str) -> dict[str, Any]:
    return {"line": line, "id": item_id, **FlipResult(reward=None, error=msg).to_dict()}


def _record(item_id: Any, line: int, res: FlipResult) -> dict[str, Any]:
    return {"line": line, "id": item_id, **res.to_dict()}


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
) -> Summary:
    """Score every line of ``input_path`` into ``output_path`` (JSONL), one record per line.

    Records are keyed by their input ``line`` (the user's ``id`` is kept beside it, or null),
    so a rerun skips the finished lines. The reward's settings and the input's identity are
    recorded beside the output (for an HTTP judge, with what its server says it serves: asked
    first, a :class:`~fliprm.errors.BackendError` if it cannot be reached): a rerun with other
    settings, another model under the same served name or another input is refused
    (:class:`~fliprm.errors.ConfigError`) unless ``force`` starts the output over; an input that
    only grew (rows appended) resumes.

    >>> import asyncio  # doctest: +SKIP
    >>> asyncio.run(score_file(FlipReward(), "pairs.jsonl", "scores.jsonl")).mean_reward  # doctest: +SKIP
    """
    inp, out = Path(input_path), Path(output_path)
    # samefile: a symlink or a hard link to the input is the input too
    if out.exists() and inp.exists() and os.path.samefile(out, inp):
        raise ConfigError(f"the output {out} is the input file: write the results elsewhere")
    records = read_records(inp)  # a corrupt parquet input is refused before the output is touched
    ident = input_identity(inp)
    if input_label:
        ident["path"] = input_label
    # an HTTP judge's identity includes what its server serves: a model swapped under the same
    # name is another reward, and its resume is refused like any other settings change
    await reward.aidentify()
    manifest = {"input": ident, "fingerprint": reward.fingerprint(),
                "settings": {"reward": reward.identity(), "fields": asdict(fields)}}
    summary = Summary()
    t0 = time.perf_counter()
    with ResultWriter(out, key_field="line", retry_errors=retry_errors, manifest=manifest,
                      force=force, input_lines=True) as writer:
        summary.errors_before = writer.errors_before
        summary.first_errors.extend(writer.first_errors_before)
        seen: dict[str, int] = {}

        def emit(rec: dict[str, Any]) -> None:
            writer.write(rec)
            summary.add(rec)
            if on_item:
                on_item(rec)

        pending: list[tuple[Any, int, tuple[Any, Any, Any]]] = []

        async def flush() -> None:
            if not pending:
                return
            instr = [a[0] for _, _, a in pending]
            resp = [a[1] for _, _, a in pending]
            ctx = [a[2] for _, _, a in pending]
            async for i, res in reward.ascore_stream(instr, resp, ctx):
                item_id, line, _ = pending[i]
                if res.error and res.error.startswith("item "):
                    res.error = f"line {line}" + res.error[res.error.index(":"):]
                emit(_record(item_id, line, res))
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
            if first != line:
                emit(_error_record(item_id, line, f"line {line}: duplicate id {item_id!r} "
                                                   f"(first on line {first})"))
                continue
            try:
                args = record_to_args(rec, fields)
            except InputError as exc:
                emit(_error_record(item_id, line, f"line {line}: {exc}"))
                continue
            pending.append((item_id, line, args))
            if len(pending) >= chunk_size:
                await flush()
        await flush()
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _limited(it: Iterator[Any], limit: int | None) -> Iterator[Any]:
    for n, x in enumerate(it):
        if limit is not None and n >= limit:
            return
        yield x
