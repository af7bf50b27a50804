"""Reading input files and writing resumable JSONL results.

Input: JSONL, CSV or parquet. A broken line (bad JSON, invalid UTF-8, not an object) is not
fatal: it comes back as an :class:`InputError` naming the line, so a batch goes on.

Output: :class:`ResultWriter` appends one JSON line per finished item and flushes it at once,
so a killed run loses nothing that was finished. On restart it reads the ids already written
(ignoring a half-written last line, which it cuts off) so they are skipped, never duplicated.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, FlipError, InputError

__all__ = ["ResultWriter", "read_records"]


class OutputError(FlipError, OSError):
    """The output location cannot be written (read-only, full, missing folder)."""


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]  # Windows tools start UTF-8 files with a BOM
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, InputError(f"line {lineno}: invalid UTF-8 at byte {exc.start}")
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                yield lineno, InputError(f"line {lineno}: broken JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield lineno, InputError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield lineno, obj


#: the csv module's default cell cap is 128 KiB; a long response is a valid cell, not a crash
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    # surrogateescape keeps undecodable bytes visible, so the bad row (not the file) is refused
    data = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(data, newline=""))
    i = 1  # line 1 is the header; rows count from 2
    while True:
        i += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield i, InputError(f"line {i}: broken CSV: {exc}")
            continue
        if None in row:
            yield i, InputError(f"line {i}: more cells than header columns")
            continue
        bad = [k for k, v in row.items() if isinstance(v, str) and _UNDECODABLE.search(v)]
        if bad:
            yield i, InputError(f"line {i}: invalid UTF-8 in column {bad[0]!r}")
            continue
        yield i, dict(row)


def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading parquet needs pyarrow: pip install 'fliprm[files]'") from None
    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """Yield ``(line_or_row_number, record_or_InputError)`` from a JSONL, CSV or parquet file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv(path)
    if suffix in (".parquet", ".pq"):
        return _parquet(path)
    return _jsonl(path)


class ResultWriter:
    """Append-only JSONL results keyed by ``id``, safe to kill and restart.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
    >>> with ResultWriter(p) as w:
    ...     w.write({"id": "a", "reward": 1.0})
    >>> ResultWriter(p).done
    {'a'}
    """

    def __init__(self, path: str | Path, *, id_field: str = "id", retry_errors: bool = False) -> None:
        self.path = Path(path)
        self.id_field = id_field
        self.done: set[str] = set()
        self._f: TextIO | None = None
        self._recover(retry_errors)

    def _recover(self, retry_errors: bool) -> None:
        if not self.path.is_file():
            return  # new output, or a device like /dev/full: nothing to resume
        keep: list[str] = []
        dropped = False
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        for n, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                if n == len(lines) - 1:
                    dropped = True  # half-written by a killed run: the item is redone
                    continue
                raise OutputError(f"{self.path}: line {n + 1} is not JSON; fix or remove it") from None
            if retry_errors and obj.get("error"):
                dropped = True
                continue
            self.done.add(str(obj.get(self.id_field)))
            keep.append(raw.decode("utf-8"))
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, self.path)

    def _open(self) -> TextIO:
        if self._f is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "a", encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"cannot write results to {self.path}: {exc.strerror}") from exc
        return self._f

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (e.g. an id read from a JSON "\ud800" escape) cannot be UTF-8;
            # \u escapes keep the line valid and read back to the same id, so resume still works
            line = json.dumps(record, ensure_ascii=True, default=str) + "\n"
        f = self._open()
        try:
            f.write(line)
            f.flush()
        except OSError as exc:
            raise OutputError(f"cannot write results to {self.path}: {exc.strerror}") from exc
        self.done.add(str(record.get(self.id_field)))

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.flush()
                os.fsync(self._f.fileno())
            except OSError:
                pass  # write() already raised the real error; do not mask it
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
