"""Bad input through fliprm eval rewardbench2 (corpus, shared tests: corpus.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fliprm.backends.fake as fake_module
from bad_input.corpus import (  # noqa: F401  (shared tests, collected here for ENTRY)
    _REAL_FAKE_REPLY,
    _SLOW_CLI,
    _rb2_items,
    _records,
    _without_timing,
    _write_rows,
    invoke,
    test_bad_line_in_benchmark_or_rerank_file_stops_before_any_work,
    test_bad_value,
    test_judged_run_to_a_path_that_cannot_be_created_is_a_clear_error,
    test_rest_of_batch_completes_and_nothing_is_lost,
)

ENTRY = "eval_rb2"


def test_eval_rewardbench2_sigkilled_then_resumed_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write_rows(tmp_path / "rb2.jsonl", _rb2_items(14))
    methods = "flip,pointwise"
    total = 14 * 2

    # the reference: one clean, uninterrupted run with the same scripted backend
    monkeypatch.setattr(fake_module, "scripted_reply", _REAL_FAKE_REPLY)
    monkeypatch.setattr("fliprm.eval.rb2_report._plots", lambda summary, out_dir: [])
    clean = tmp_path / "clean"
    code, output = invoke(
        [
            "eval",
            "rewardbench2",
            "--data",
            data,
            "--methods",
            methods,
            "--concurrency",
            "1",
            "--out",
            clean,
            "--backend",
            "fake",
        ]
    )
    assert code == 0, output

    out = tmp_path / "killed"
    records = out / "records.jsonl"

    def run(delay: float) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-c",
            _SLOW_CLI,
            str(delay),
            "eval",
            "rewardbench2",
            "--data",
            str(data),
            "--methods",
            methods,
            "--concurrency",
            "1",
            "--out",
            str(out),
            "--backend",
            "fake",
        ]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # seeded, so a failure reruns as it was; FLIPRM_KILL_SEED=<n> tries another kill point
    seed = int(os.environ.get("FLIPRM_KILL_SEED", "20261206"))
    want = random.Random(seed).randint(2, total - 4)  # kill after `want` finished records
    proc = run(0.08)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if records.exists() and records.read_bytes().count(b"\n") >= want:
            break
        if proc.poll() is not None:
            pytest.fail(f"the first run ended before it could be killed: {proc.stderr.read()!r}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]  # a half-written last line is redone
    n_before = complete.count(b"\n")
    assert want <= n_before < total, f"seed {seed}: killed after {n_before} of {total}"
    assert not (out / "results.json").exists()  # it really died mid-run

    resumed = run(0.0)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()[-2000:]

    after = records.read_bytes()
    assert after.startswith(complete), f"seed {seed}: finished records were rewritten"
    got, ref = _records(records), _records(clean / "records.jsonl")
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)) == total, f"seed {seed}: lost or duplicated records"
    assert sorted(ids) == sorted(r["id"] for r in ref)
    by_id = {r["id"]: _without_timing(r) for r in ref}
    assert all(_without_timing(r) == by_id[r["id"]] for r in got), f"seed {seed}"
    report = json.loads((out / "results.json").read_text())
    assert _without_timing(report) == _without_timing(
        json.loads((clean / "results.json").read_text())
    )
