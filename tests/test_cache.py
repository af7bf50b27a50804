"""The SQLite response cache: hits, misses, what is never stored, and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

from fliprm import FlipReward
from fliprm._types import Completion, GenerateRequest
from fliprm.backends.fake import FakeBackend
from fliprm.cache import ResponseCache, cache_key
from fliprm.errors import BadResponse

GOOD = json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "Name the capital of France."})


def _rm(backend: FakeBackend, path: Path, **kw) -> FlipReward:
    return FlipReward(backend, cache=path, **kw, method="f1")


def test_second_score_is_a_hit_and_never_calls_the_backend(tmp_path: Path) -> None:
    fb = FakeBackend(lambda req: GOOD)
    rm = _rm(fb, tmp_path / "c.sqlite")
    (first,) = rm.score(["Name the capital of France."], ["Paris."])
    (second,) = rm.score(["Name the capital of France."], ["Paris."])
    rm.close()
    assert len(fb.calls) == 1
    assert not first.cached and second.cached
    assert second.reward == first.reward == 1.0
    assert second.inferred_instruction == first.inferred_instruction


def test_hit_survives_a_new_process_view_of_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    rm = _rm(FakeBackend(lambda req: GOOD), path)
    rm.score(["x"], ["Paris."])
    rm.close()
    fb = FakeBackend(lambda req: GOOD)
    rm2 = _rm(fb, path)
    (r,) = rm2.score(["Name the capital of France."], ["Paris."])
    rm2.close()
    # the standalone FLIP call does not see the instruction: another instruction still hits
    assert fb.calls == [] and r.cached and r.reward == 1.0


def test_different_response_or_decoding_is_a_miss(tmp_path: Path) -> None:
    fb = FakeBackend(lambda req: GOOD)
    path = tmp_path / "c.sqlite"
    rm = _rm(fb, path)
    rm.score(["x"], ["Paris."])
    rm.score(["x"], ["Lyon."])
    rm.close()
    rm2 = _rm(fb, path, max_tokens=64)  # a decoding parameter is part of the key
    rm2.score(["x"], ["Paris."])
    rm2.close()
    assert len(fb.calls) == 3
    assert len(ResponseCache(path)) == 3


def test_nondeterministic_calls_are_not_cached(tmp_path: Path) -> None:
    fb = FakeBackend(lambda req: GOOD)
    rm = _rm(fb, tmp_path / "c.sqlite", temperature=0.7)  # no seed: sampling differs per call
    rm.score(["x"], ["Paris."])
    rm.score(["x"], ["Paris."])
    rm.close()
    assert len(fb.calls) == 2


def test_parse_failure_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    fb = FakeBackend(["this is not json", GOOD])
    rm = _rm(fb, path)
    (bad,) = rm.score(["Name the capital of France."], ["Paris."])
    assert not bad.parse_ok and bad.parse_error and not bad.cached
    assert len(ResponseCache(path)) == 0
    # the retry reaches the model again and its good answer is then stored
    (good,) = rm.score(["Name the capital of France."], ["Paris."])
    rm.close()
    assert good.parse_ok and not good.cached and len(fb.calls) == 2
    assert len(ResponseCache(path)) == 1


def test_backend_error_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    fb = FakeBackend([BadResponse("boom"), GOOD])
    rm = _rm(fb, path)
    (err,) = rm.score(["x"], ["Paris."])
    assert err.reward is None and "boom" in (err.error or "")
    assert len(ResponseCache(path)) == 0
    (ok,) = rm.score(["x"], ["Paris."])
    rm.close()
    assert ok.error is None and len(fb.calls) == 2


def test_corrupt_row_degrades_to_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.put("k", "m", Completion(text="hi"))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE completions SET value = '{not json' WHERE key = 'k'")
    assert cache.get("k") is None and cache.misses == 1
    cache.close()


def _writer(path: str, worker: int, n: int, barrier) -> None:
    """Child process: write ``n`` rows (half shared with the other worker) as fast as it can."""
    cache = ResponseCache(path)
    req = GenerateRequest(messages=({"role": "user", "content": "warm-up"},))
    cache.put(cache_key("m", req), "m", Completion(text="warm"))  # open + WAL before the race
    barrier.wait()
    for i in range(n):
        # even keys are written by both workers (same key, racing INSERT OR REPLACE)
        key = f"shared-{i}" if i % 2 == 0 else f"w{worker}-{i}"
        cache.put(key, "m", Completion(text=f"{worker}:{i}", prompt_tokens=i))
    cache.close()


def test_two_processes_writing_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    n = 300
    ctx = mp.get_context("spawn")  # fork would copy pytest's threads; spawn is the safe default
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, w, n, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with sqlite3.connect(path) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        keys = {k for (k,) in conn.execute("SELECT key FROM completions")}
    assert mode == "wal"
    expected = {f"shared-{i}" for i in range(0, n, 2)}
    expected |= {f"w{w}-{i}" for w in (0, 1) for i in range(1, n, 2)}
    assert expected <= keys
    assert len(keys) == len(expected) + 1  # + the warm-up row both wrote under one key
    cache = ResponseCache(path)
    hit = cache.get("shared-4")
    assert hit is not None and hit.from_cache and hit.text in {"0:4", "1:4"}
    cache.close()
