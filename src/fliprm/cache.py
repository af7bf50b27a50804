"""A persistent cache of LM completions in SQLite.

FLIP's standalone call sees only the response, never the instruction, so its completion depends
only on (model, rendered prompt, decoding parameters). Re-scoring a response against another
instruction, repeating an eval, or a GRPO group with duplicate completions then costs nothing.

Rules: only deterministic calls are cached (temperature 0, or a fixed seed); failures are never
stored (the caller decides what counts as a success); the cache never raises: a broken or locked
database, or a folder that cannot be created, degrades to a miss (one warning per problem); it
holds at most ``max_entries`` completions (the oldest go; per process: several writers to one
file may each add up to ``max_entries // 16`` between prunes).
WAL mode plus a busy timeout make concurrent writers from several processes safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path

from ._types import Completion, GenerateRequest

__all__ = ["ResponseCache", "cache_key"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def cache_key(backend_identity: dict[str, object], request: GenerateRequest) -> str:
    """Hash of everything that changes the output: the backend's answer-changing identity
    (model file hash, extra request fields, schema mode, exactness, context size) and the
    request (rendered prompt, decoding). Not timeouts, retries or concurrency."""
    payload = {"backend": backend_identity, **asdict(request)}
    # ASCII escapes: a lone surrogate anywhere in a request must not make the key unencodable
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()


def cacheable_request(request: GenerateRequest) -> bool:
    return request.temperature == 0 or request.seed is not None


class ResponseCache:
    """SQLite-backed completion cache, safe across threads and processes.

    >>> cache = ResponseCache(":memory:")
    >>> cache.get("k") is None
    True
    """

    def __init__(self, path: str | Path, *, max_entries: int | None = 1_000_000) -> None:
        self.path = str(path)
        #: the oldest entries beyond this many are deleted (never more are kept, see put)
        self.max_entries = max_entries
        self._puts = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._warned: set[str] = set()
        self.hits = 0
        self.misses = 0

    def _warn_once(self, what: str, exc: BaseException) -> None:
        # one line per problem, not one per item: a cache that cannot open fails every call
        if what not in self._warned:
            self._warned.add(what)
            log.warning("response cache %s %s (%s); scoring goes on without it", self.path,
                        what, exc)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.commit()
            self._conn = conn
        return self._conn

    def get(self, key: str) -> Completion | None:
        try:
            with self._lock:
                row = self._connect().execute(
                    "SELECT value FROM completions WHERE key = ?", (key,)
                ).fetchone()
        except (sqlite3.Error, OSError) as exc:  # OSError: its folder cannot be created
            self._warn_once("is unavailable", exc)
            return None
        if row is None:
            self.misses += 1
            return None
        try:
            data = json.loads(row[0])
            if data.get("token_logprobs") is not None:
                data["token_logprobs"] = [tuple(t) for t in data["token_logprobs"]]
            comp = Completion(**data)
        except (ValueError, TypeError):
            self.misses += 1
            return None
        comp.from_cache = True
        comp.latency_s = 0.0
        self.hits += 1
        return comp

    def put(self, key: str, model_id: str, completion: Completion) -> None:
        data = asdict(completion)
        data.pop("from_cache", None)
        try:
            value = json.dumps(data, ensure_ascii=False)
            with self._lock:
                conn = self._connect()
                conn.execute(
                    "INSERT OR REPLACE INTO completions (key, model, value) VALUES (?, ?, ?)",
                    (key, model_id, value),
                )
                self._puts += 1
                if self.max_entries is not None:
                    # Every `step` writes (and on the first, for a file that is already over the
                    # cap) keep the newest max_entries - step + 1: the step - 1 writes until the
                    # next prune then fit under the cap. rowid grows with every insert (a
                    # replaced key gets a new one): this walks the rowid index, no table sort.
                    step = max(1, min(256, self.max_entries // 16))
                    if self._puts == 1 or self._puts % step == 0:
                        conn.execute(
                            "DELETE FROM completions WHERE rowid <= (SELECT rowid FROM "
                            "completions ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                            (self.max_entries - step + 1,),
                        )
                conn.commit()
        except (sqlite3.Error, OSError, TypeError, ValueError) as exc:
            self._warn_once("is unavailable" if self._conn is None else "cannot be written", exc)

    def __len__(self) -> int:
        try:
            with self._lock:
                return int(self._connect().execute("SELECT COUNT(*) FROM completions").fetchone()[0])
        except (sqlite3.Error, OSError):
            return 0

    def clear(self) -> None:
        with self._lock:
            self._connect().execute("DELETE FROM completions")
            self._connect().commit()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
