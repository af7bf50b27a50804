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
import fcntl
import hashlib
import io
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ._version import __version__
from .config import describe_differences
from .errors import ConfigError, FlipError, InputError

__all__ = [
    "OutputError",
    "ResultWriter",
    "check_manifest",
    "compare_manifests",
    "input_identity",
    "manifest_path",
    "read_manifest",
    "read_records",
    "write_manifest",
]


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


MANIFEST_SUFFIX = ".fliprm.json"


def manifest_path(output: str | Path) -> Path:
    """Where the settings and input identity of ``output`` are recorded (a sidecar file)."""
    p = Path(output)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def _looks_like_ours(raw: bytes, key_field: str) -> bool:
    # our records are JSON objects whose first key is the resume key
    return raw.lstrip().startswith(b'{"' + key_field.encode() + b'"')


class ResultWriter:
    """Append-only JSONL results keyed by ``key_field``, safe to kill, restart and share.

    * **One writer.** The output is locked (``flock``) for as long as the writer is open: a
      second run into the same output is refused at once instead of interleaving records.
    * **No mixing.** ``manifest`` (settings and input identity) is written beside the output
      (``<output>.fliprm.json``). A rerun must bring the same one, or a compatible one (see
      :func:`check_manifest`), or ``force=True`` to start the output over.
    * **No loss.** A half-written last line (a killed run) is cut off in place and its item is
      redone; a line that is not one of ours (a foreign file) is never touched: the run is
      refused. Error records already in the file are counted (:attr:`errors_before`) and, with
      ``retry_errors``, dropped so their items are redone: one record per key either way.
      ``retry_errors`` may be a predicate: only the error records it accepts are dropped (a
      folder shared by several methods redoes the failures of the methods being run).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
    >>> with ResultWriter(p, key_field="id") as w:
    ...     w.write({"id": "a", "reward": 1.0})
    >>> ResultWriter(p, key_field="id").done
    {'a'}
    """

    def __init__(
        self,
        path: str | Path,
        *,
        key_field: str = "line",
        retry_errors: bool | Callable[[dict[str, Any]], bool] = False,
        manifest: dict[str, Any] | None = None,
        force: bool = False,
        merge: bool = False,
    ) -> None:
        self.path = Path(path)
        self.key_field = key_field
        self.done: set[str] = set()
        self.errors_before = 0
        self.first_errors_before: list[str] = []
        self._f: TextIO | None = None
        self._lock_fd: int | None = None
        self._lock()
        try:
            if force:
                self._reset()
            # a device (/dev/null, /dev/full) has no sidecar: nothing there to resume or mix
            if manifest is not None and self._lock_fd is not None:
                write_manifest(self.path, manifest, merge=merge, fd=self._lock_fd)
            self._recover(retry_errors)
        except BaseException:
            self._unlock()
            raise

    # ---- locking ------------------------------------------------------------------------------

    def _lock(self) -> None:
        if not _regular_or_missing(self.path):
            return  # /dev/null, /dev/full: nothing to protect
        lock = manifest_path(self.path)
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write results to {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(
                f"{self.path} is being written by another fliprm run (locked); wait for it, or "
                "write to another output"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _reset(self) -> None:
        if self.path.is_file():
            self.path.unlink()
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)

    # ---- resume ---------------------------------------------------------------------------------

    def _recover(self, retry_errors: bool | Callable[[dict[str, Any]], bool]) -> None:
        if not self.path.is_file():
            return  # new output, or a device like /dev/full: nothing to resume
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        keep: list[bytes] = []
        dropped = False
        offset = 0
        for n, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            last = n == len(lines) - 1  # no newline after it
            try:
                obj = json.loads(raw)
            except ValueError:
                if last and _looks_like_ours(raw, self.key_field):
                    # half-written by a killed run: cut it off in place, the item is redone
                    os.truncate(self.path, start)
                    break
                raise OutputError(
                    f"{self.path}: line {n + 1} is not a fliprm record; this file was not "
                    "written by fliprm score: write to another output (or --force to replace it)"
                ) from None
            if not isinstance(obj, dict) or self.key_field not in obj:
                raise OutputError(
                    f"{self.path}: line {n + 1} is not a fliprm record (no {self.key_field!r}); "
                    "write to another output (or --force to replace it)"
                )
            if last:  # a whole record whose newline never made it to disk
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            if obj.get("error"):
                if retry_errors(obj) if callable(retry_errors) else retry_errors:
                    dropped = True
                    continue
                self.errors_before += 1
                if len(self.first_errors_before) < 5:
                    self.first_errors_before.append(str(obj["error"]))
            self.done.add(str(obj[self.key_field]))
            keep.append(raw)
        if dropped:
            self._rewrite(keep)

    def _rewrite(self, keep: list[bytes]) -> None:
        """Drop the retried error records (the only case that rewrites the file)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(line + b"\n" for line in keep))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(
                f"cannot drop the error records from {self.path} for --retry-errors: "
                f"{exc.strerror}; the output is unchanged"
            ) from exc

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
        self.done.add(str(record.get(self.key_field)))

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
        self._unlock()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _regular_or_missing(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True  # to be created (where that fails, the writer says why)
    except OSError:
        return False


# ---- manifests: settings and input identity next to every output -------------------------------

def input_identity(path: str | Path) -> dict[str, Any]:
    """Path, size and content hash of an input file (what a resume must find again).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "in.jsonl"); _ = open(p, "w").write("{}\\n")
    >>> input_identity(p)["size"]
    3
    """
    p = Path(path)
    h = hashlib.sha256()
    size = 0
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"path": str(p.resolve()), "size": size, "sha256": h.hexdigest()}


def _prefix_sha256(path: str | Path, size: int) -> str | None:
    h = hashlib.sha256()
    left = size
    try:
        with open(path, "rb") as f:
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    return None
                h.update(chunk)
                left -= len(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _same_input(old: dict[str, Any], new: dict[str, Any]) -> bool:
    if old.get("sha256") == new.get("sha256"):
        return True
    # the same file with rows appended: resume, the finished lines are still the same lines
    size = old.get("size")
    return (isinstance(size, int) and new.get("size", 0) > size and new.get("path")
            and _prefix_sha256(new["path"], size) == old.get("sha256"))


def read_manifest(output: str | Path) -> dict[str, Any] | None:
    mp = manifest_path(output)
    try:
        text = mp.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise OutputError(f"{mp} is not valid JSON; delete it only if you also delete "
                          f"{Path(output).name} (or use --force)") from None
    if not isinstance(data, dict):
        raise OutputError(f"{mp} is not a fliprm manifest")
    return data


def check_manifest(output: str | Path, manifest: dict[str, Any], *, merge: bool = False) -> None:
    """Refuse to add to ``output`` with other settings or another input.

    ``manifest`` is ``{"input": input_identity(...), "settings": {name: identity, ...}, ...}``.
    With ``merge`` (an eval folder holding several methods) new setting names may join, but an
    existing name must keep its settings. An output that exists without a manifest was not
    written by this fliprm (or by an older one) and is refused too.
    """
    old = read_manifest(output)
    out = Path(output)
    if old is None:
        if out.is_file() and out.stat().st_size > 0:
            raise ConfigError(
                f"{out} already holds results but no record of their settings "
                f"({manifest_path(out).name} is missing: an older fliprm or another tool wrote "
                "it), so they cannot be resumed safely; write to a new output, or pass --force "
                "to start it over"
            )
        return
    compare_manifests(old, manifest, str(out), merge=merge,
                      how="write to a new output, or pass --force to start this one over")


def compare_manifests(old: dict[str, Any], new: dict[str, Any], where: str, *, how: str,
                      merge: bool = False) -> None:
    """Raise :class:`ConfigError` naming what differs between two manifests' inputs and settings
    (shared by the JSONL outputs and the Ray plan)."""
    if "input" in new and old.get("input") and not _same_input(old["input"], new["input"]):
        o, n = old["input"], new["input"]
        raise ConfigError(
            f"{where} holds results for another input ({o.get('path')}, {o.get('size')} bytes, "
            f"sha256 {str(o.get('sha256'))[:12]}) than this run's ({n.get('path')}, "
            f"{n.get('size')} bytes, sha256 {str(n.get('sha256'))[:12]}); {how}"
        )
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    for name in sorted(set(old_s) & set(new_s) if merge else set(old_s) | set(new_s)):
        if old_s.get(name) != new_s.get(name):
            diffs = describe_differences(old_s.get(name) or {}, new_s.get(name) or {},
                                         "" if merge else f"{name}.")
            label = f" for {name!r}" if merge else ""
            raise ConfigError(
                f"{where} was written with other settings{label} ({'; '.join(diffs)}); {how}"
            )


def write_manifest(
    output: str | Path, manifest: dict[str, Any], *, merge: bool = False, fd: int | None = None
) -> None:
    """Check ``manifest`` against the one on disk (:func:`check_manifest`), then record it.

    ``fd``: the manifest file, open and locked by the caller. It is rewritten in place (not
    renamed over), so the lock stays on the file every later run opens.
    """
    check_manifest(output, manifest, merge=merge)
    old = read_manifest(output) or {}
    data = {"fliprm": __version__, **old, **manifest}
    if merge:
        data["settings"] = {**old.get("settings", {}), **manifest.get("settings", {})}
    if old.get("input") and manifest.get("input"):
        data["input"] = manifest["input"]  # an appended input becomes the new reference
    blob = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    own = fd is None
    if own:
        fd = os.open(manifest_path(output), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, blob, 0)
        os.fsync(fd)
    finally:
        if own:
            os.close(fd)
