"""`fliprm score` killed with SIGKILL mid-run and restarted: no finished item lost, none
duplicated, the finished lines kept byte for byte. Uses the real embedded model."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]

ANSWERS = [
    "Paris is the capital of France.", "Water boils at 100 degrees Celsius at sea level.",
    "A triangle has three sides.", "The Pacific is the largest ocean.", "Dogs are mammals.",
    "Python lists are mutable.", "The sun is a star.", "Bees make honey.",
]


def _run(inp, out, cache):
    cmd = [sys.executable, "-m", "fliprm.cli.main", "score", str(inp), "-o", str(out),
           "--max-tokens", "48", "--cache", str(cache),
           # one generated answer at a time (F1, up to 48 tokens each), so the run is still
           # going when it is killed: pmi on these short texts finishes all 8 almost at once
           "--method", "f1", "--concurrency", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, embedded_backend):
    inp, out, cache = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "c.sqlite"
    with open(inp, "w") as f:
        f.writelines(json.dumps({"id": f"q{i}", "instruction": "Tell me a fact.", "response": a}) + "\n" for i, a in enumerate(ANSWERS))
    proc = _run(inp, out, cache)
    want = random.Random(20261206).randint(1, 4)  # seeded: a failure can be rerun as it was
    deadline = time.time() + 600
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= want:
            break
        if proc.poll() is not None:
            pytest.fail("the first run ended before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = out.read_text()
    done_before = [json.loads(line)["id"] for line in before.splitlines() if line.strip().endswith("}")]
    assert 1 <= len(done_before) < len(ANSWERS)

    assert _run(inp, out, cache).wait(timeout=900) == 0
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(f"q{i}" for i in range(len(ANSWERS)))  # nothing lost or doubled
    complete_before = "".join(line + "\n" for line in before.splitlines() if line.strip().endswith("}"))
    assert out.read_text().startswith(complete_before)  # finished lines kept as they were
    assert all(json.loads(line)["error"] is None for line in lines)
