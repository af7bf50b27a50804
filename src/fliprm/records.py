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
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, TextIO

from ._version import __version__
from .config import describe_differences
from .errors import ConfigError, FlipError, InputError

__all__ = [
    "OutputError",
    "ResultWriter",
    "changed_last_line",
    "check_manifest",
    "compare_manifests",
    "input_identity",
    "manifest_path",
    "manifest_problem",
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
            except RecursionError:
                # the C decoder recurses per nesting level: this line, not the run, is the problem
                yield lineno, InputError(f"line {lineno}: JSON nested too deeply")
                continue
            if not isinstance(obj, dict):
                yield lineno, InputError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield lineno, obj


#: the csv module's default cell cap is 128 KiB; a long response is a valid cell, not a crash
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    return _csv_rows(path.read_bytes())


def _csv_rows(raw: bytes) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    # surrogateescape keeps undecodable bytes visible, so the bad row (not the file) is refused
    data = raw.decode("utf-8-sig", errors="surrogateescape")
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
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading parquet needs pyarrow: pip install 'fliprm[files]'") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable parquet file ({first})") from None
    return enumerate(rows, start=1)


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """Yield ``(line_or_row_number, record_or_InputError)`` from a JSONL, CSV or parquet file.

    A parquet file is read here, at once, so a corrupt one is a :class:`ConfigError` before any
    output is written.
    """
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
    # our records are JSON objects whose first key is the resume key; a short write may have
    # stopped before that key was whole (`{"li`), so a start of it counts too
    head, marker = raw.strip(), b'{"' + key_field.encode() + b'"'
    return head.startswith(marker) or (bool(head) and marker.startswith(head))


class ResultWriter:
    """Append-only JSONL results keyed by ``key_field``, safe to kill, restart and share.

    * **One writer.** The output file itself (its device and inode, so a symlink or a hard
      link to it is the same output) and its sidecar are locked (``flock``) for as long as the
      writer is open: a second run into the same output is refused at once instead of
      interleaving records.
    * **No mixing.** ``manifest`` (settings and input identity) is written beside the output
      (``<output>.fliprm.json``). A rerun must bring the same one, or a compatible one (see
      :func:`check_manifest`), or ``force=True`` to start the output over.
    * **No loss.** A half-written last line (a killed run) is cut off in place and its item is
      redone; a line that is not one of ours (a foreign file) is never touched: the run is
      refused. Error records already in the file are counted (:attr:`errors_before`) and, with
      ``retry_errors``, dropped so their items are redone: one record per key either way.
      ``retry_errors`` may be a predicate: only the error records it accepts are dropped (a
      folder shared by several methods redoes the failures of the methods being run).
    * **Changed last line.** With ``input_lines`` (keys are input line numbers, as in
      ``score_file``) and an input that grew although its old last line had no newline, the
      first appended row joined that line: its record is dropped and the line redone.

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
        input_lines: bool = False,
    ) -> None:
        self.path = Path(path)
        self.key_field = key_field
        self.done: set[str] = set()
        self.errors_before = 0
        #: ``errors_before`` by ``error_kind`` ("unknown": records written before that field)
        self.error_kinds_before: Counter[str] = Counter()
        self.first_errors_before: list[str] = []
        self._f: TextIO | None = None
        self._lock_fd: int | None = None
        self._out_fd: int | None = None
        self._lock()
        try:
            if force:
                self._reset()
            # a device (/dev/null, /dev/full) has no sidecar: nothing there to resume or mix
            if self._lock_fd is None:
                manifest = None
            redo: set[str] = set()
            if manifest is not None:
                old = check_manifest(self.path, manifest, merge=merge)
                if input_lines and old and old.get("input") and manifest.get("input"):
                    n = changed_last_line(old["input"], manifest["input"])
                    redo = set() if n is None else {str(n)}
            # the stale record goes before the new input identity is recorded: a run killed in
            # between still finds the old identity, and the changed line, next time
            self._recover(retry_errors, redo)
            if manifest is not None:
                write_manifest(self.path, manifest, merge=merge, fd=self._lock_fd)
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
        self._lock_fd = fd
        try:
            self._try_flock(fd)
            # the sidecar is per name; the output file is per inode: a symlink or a hard link
            # to the same output has another sidecar but the same file, so that is locked too
            try:
                out_fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot write results to {self.path}: {exc.strerror}") from exc
            self._out_fd = out_fd
            self._try_flock(out_fd)
        except BaseException:
            self._unlock()
            raise

    def _try_flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(
                f"{self.path} is being written by another fliprm run (locked); wait for it, or "
                "write to another output"
            ) from None

    def _unlock(self) -> None:
        for name in ("_out_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing the descriptor releases the flock
                setattr(self, name, None)

    def _reset(self) -> None:
        if self.path.is_file():
            os.truncate(self.path, 0)  # in place: the lock stays on the file other runs open
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)

    # ---- resume ---------------------------------------------------------------------------------

    def _recover(self, retry_errors: bool | Callable[[dict[str, Any]], bool],
                 redo: Collection[str] = ()) -> None:
        if not self.path.is_file():
            return  # new output, or a device like /dev/full: nothing to resume
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        keep: list[bytes] = []
        dropped = False
        offset = 0
        records = 0
        for n, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            last = n == len(lines) - 1  # no newline after it
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                # every record is one write ending in a newline, so an unterminated last line
                # after records of ours is a short write (a kill, a full disk), whatever it holds
                if last and (records or _looks_like_ours(raw, self.key_field)):
                    # cut it off in place, the item is redone
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
            records += 1
            if last:  # a whole record whose newline never made it to disk
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            if str(obj[self.key_field]) in redo:
                dropped = True  # its input line changed since it was scored
                continue
            if obj.get("error"):
                if retry_errors(obj) if callable(retry_errors) else retry_errors:
                    dropped = True
                    continue
                self.errors_before += 1
                self.error_kinds_before[str(obj.get("error_kind") or "unknown")] += 1
                if len(self.first_errors_before) < 5:
                    self.first_errors_before.append(str(obj["error"]))
            self.done.add(str(obj[self.key_field]))
            keep.append(raw)
        if dropped:
            self._rewrite(keep)

    def _rewrite(self, keep: list[bytes]) -> None:
        """Drop the records to redo (retried errors, a changed line): the only rewrite."""
        # beside the real file: a symlinked output stays a symlink
        target = Path(os.path.realpath(self.path))
        tmp = target.with_name(target.name + ".tmp")
        fd = None
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(line + b"\n" for line in keep))
                f.flush()
                os.fsync(f.fileno())
            if self._out_fd is not None:
                # the new file is the one later runs open: lock it before it takes the name
                fd = os.open(tmp, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, target)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise OutputError(
                f"cannot drop the records to redo from {self.path}: "
                f"{exc.strerror}; the output is unchanged"
            ) from exc
        if fd is not None:
            assert self._out_fd is not None
            os.close(self._out_fd)
            self._out_fd = fd

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


def changed_last_line(old: dict[str, Any], new: dict[str, Any]) -> int | None:
    """The number (as ``read_records`` counts) of the old input's last record, if appending
    rows to the input changed it, else None.

    An input that grew is resumed (its old bytes are a prefix of the new ones), but if its old
    last line had no newline, the first appended row joined that line: the line already scored
    is not the line there now.
    """
    size, path = old.get("size"), new.get("path")
    if old.get("sha256") == new.get("sha256") or not isinstance(size, int) or size < 1 or not path:
        return None
    try:
        with open(path, "rb") as f:
            prefix = f.read(size)
            after = f.read(1)
    except OSError:
        return None
    if len(prefix) < size or prefix.endswith(b"\n") or after in (b"\n", b"\r", b""):
        return None  # ended on a line break, or the append started with one: no line changed
    if Path(path).suffix.lower() == ".csv":
        last = None
        for last, _ in _csv_rows(prefix):
            pass
        return last
    tail = prefix.rsplit(b"\n", 1)[-1]
    return prefix.count(b"\n") + 1 if tail.strip() else None


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
    problem = manifest_problem(data)
    if problem:
        raise OutputError(f"{mp}: {problem}; the results beside it cannot be resumed safely: "
                          "write to a new output, or pass --force to start this one over")
    return data


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def manifest_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a recorded manifest (or ``_plan.json``), or None.

    Fields are optional (an eval over a hub dataset has no file identity) but, where present,
    must have the shape fliprm writes: a damaged sidecar must not crash or match by accident.

    >>> manifest_problem({"input": "x"})
    "field 'input' must be an object, got str"
    """
    if "input" in data:
        ident = data["input"]
        if not isinstance(ident, dict):
            return f"field 'input' must be an object, got {_kind(ident)}"
        if "sha256" not in ident:
            return "field 'input.sha256' is missing"
        if not isinstance(ident["sha256"], (str, type(None))):
            return f"field 'input.sha256' must be a string, got {_kind(ident['sha256'])}"
        if "size" in ident and (not isinstance(ident["size"], int) or isinstance(ident["size"], bool)):
            return f"field 'input.size' must be an integer, got {_kind(ident['size'])}"
    if "settings" in data:
        settings = data["settings"]
        if not isinstance(settings, dict):
            return f"field 'settings' must be an object, got {_kind(settings)}"
        for name, value in settings.items():
            if not isinstance(value, dict):
                return f"field 'settings.{name}' must be an object, got {_kind(value)}"
    return None


def check_manifest(
    output: str | Path, manifest: dict[str, Any], *, merge: bool = False
) -> dict[str, Any] | None:
    """Refuse to add to ``output`` with other settings or another input.

    ``manifest`` is ``{"input": input_identity(...), "settings": {name: identity, ...}, ...}``.
    With ``merge`` (an eval folder holding several methods) new setting names may join, but an
    existing name must keep its settings. An output that exists without a manifest was not
    written by this fliprm (or by an older one) and is refused too, and so is a manifest
    without the input identity this run brings. Returns the recorded manifest (None if none).
    """
    old = read_manifest(output)
    out = Path(output)
    how = "write to a new output, or pass --force to start this one over"
    if old is None:
        if out.is_file() and out.stat().st_size > 0:
            raise ConfigError(
                f"{out} already holds results but no record of their settings "
                f"({manifest_path(out).name} is missing: an older fliprm or another tool wrote "
                "it), so they cannot be resumed safely; write to a new output, or pass --force "
                "to start it over"
            )
        return None
    if "input" in manifest and "input" not in old and out.is_file() and out.stat().st_size > 0:
        # without it any input would resume these results
        raise OutputError(f"{manifest_path(out)}: field 'input' is missing, so the results "
                          f"beside it cannot be matched to this input; {how}")
    compare_manifests(old, manifest, str(out), merge=merge, how=how)
    return old


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
