"""The Ray scale-out path: deterministic shards, same rows as the single-machine path, resume.

Shard planning and reading need no Ray. The end-to-end tests start one local Ray instance for
the module (~10 s) and are marked ``slow``; the real-model test is also marked ``model``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fliprm import FlipReward
from fliprm.batch import Fields, score_file
from fliprm.config import RewardConfig, RuntimeOptions
from fliprm.scale import plan_shards, shard_path
from fliprm.scale._shards import read_shard
from helpers_fliprm import OpenAIStandIn, chat_reply, score_app

pq = pytest.importorskip("pyarrow.parquet")

# Real, short pairs (hand-written for this test; no shared data needed).
PAIRS = [
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("List three primary colors.", "1. Red\n2. Blue\n3. Yellow"),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("Write a haiku about autumn rain.", "Cold rain on red leaves\nthe gutters hum all night long\nsummer washes out"),
    ("How many legs does a spider have?", "A spider has eight legs."),
]
SETTINGS = {"template": "flip-short", "max_tokens": 48}  # short outputs keep CPU time low


def _write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _pairs_file(tmp_path: Path) -> Path:
    return _write_jsonl(tmp_path / "pairs.jsonl",
                        [{"id": f"p{i}", "instruction": x, "response": y} for i, (x, y) in enumerate(PAIRS)])


# ---- no Ray ---------------------------------------------------------------------------------


def test_jsonl_shards_are_fixed_line_blocks_and_seek_correctly(tmp_path):
    rows: list[dict | str] = [{"id": str(i), "instruction": "a", "response": "b"} for i in range(7)]
    rows.insert(2, "")  # a blank line still counts as a line: shards depend on the file only
    path = _write_jsonl(tmp_path / "in.jsonl", rows)
    plan = plan_shards(path, shard_size=3)
    assert [(s.start, s.stop, s.rows) for s in plan.shards] == [(0, 3, 2), (3, 6, 3), (6, 8, 2)]
    assert plan.total_rows == 7
    assert [r["id"] for r in read_shard(plan, plan.shards[1], Fields())] == ["2", "3", "4"]
    assert [r["line"] for r in read_shard(plan, plan.shards[2], Fields())] == [7, 8]


def test_bad_rows_become_error_rows_with_line_numbers(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "instruction": "x", "response": "y"}, "{broken", {"id": "b", "instruction": "x"},
        {"id": "a", "instruction": "x", "response": "y"},
    ])
    plan = plan_shards(path, shard_size=10)
    rows = read_shard(plan, plan.shards[0], Fields())
    assert rows[0]["error"] is None and json.loads(rows[0]["args"]) == ["x", "y", None]
    assert rows[1]["id"] is None and rows[1]["error"].startswith("line 2: broken JSON")
    assert rows[2]["error"] == "line 3: field 'response' is missing"
    assert rows[3]["id"] == "a" and rows[3]["line"] == 4 and "duplicate id" in rows[3]["error"]


def test_parquet_shards_follow_row_order_across_row_groups(tmp_path):
    import pyarrow as pa

    table = pa.table({"id": [str(i) for i in range(10)], "instruction": ["i"] * 10, "response": ["r"] * 10})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=4)
    plan = plan_shards(tmp_path / "in.parquet", shard_size=3)
    assert len(plan.shards) == 4
    assert [r["id"] for r in read_shard(plan, plan.shards[1], Fields())] == ["3", "4", "5"]
    assert [r["line"] for r in read_shard(plan, plan.shards[3], Fields())] == [10]


def test_importing_fliprm_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, fliprm, fliprm.scale; print('ray' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"


# ---- with a local Ray instance ----------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows(output_dir: Path) -> list[dict]:
    files = sorted(output_dir.glob("shard-*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.mark.slow
def test_fake_backend_rows_match_single_machine_records(local_ray, tmp_path, fake_flip):
    from fliprm.scale import score_file_ray

    path = _write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "instruction": "Name the capital of France.", "response": "Paris."},
        "{broken",
        {"id": "b", "instruction": "Name a color.", "response": "Blue."},
        {"id": "c", "instruction": "no response"},
    ])
    config = RewardConfig(backend="fake")  # the scripted dry-run judge, in every actor
    s = score_file_ray(path, tmp_path / "ray", config=config, shard_size=2, progress=False)
    assert (s.shards_written, s.scored, s.errors) == (2, 4, 2)

    asyncio.run(score_file(FlipReward(config=config), path, tmp_path / "single.jsonl"))
    lines = (tmp_path / "single.jsonl").read_text(encoding="utf-8").splitlines()
    single = sorted((json.loads(line) for line in lines),
                    key=lambda r: r["line"])  # the single path writes in completion order
    ray_rows = _rows(tmp_path / "ray")
    assert [r["line"] for r in ray_rows] == [r["line"] for r in single] == [1, 2, 3, 4]
    assert [r["id"] for r in ray_rows] == [r["id"] for r in single] == ["a", None, "b", "c"]
    volatile = {"latency_s", "model"}
    for a, b in zip(ray_rows, single):
        if isinstance(a.get("extra"), str):  # parquet keeps the extra dict as JSON text
            a["extra"] = json.loads(a["extra"])
        assert set(a) - {"extra"} == set(b) - {"extra"}  # same schema
        assert {k: v for k, v in a.items() if k not in volatile and k in b} == \
               {k: v for k, v in b.items() if k not in volatile}


@pytest.mark.slow
@pytest.mark.model
def test_embedded_rewards_equal_single_machine_and_resume_redoes_only_missing_shard(
    local_ray, embedded_backend, tmp_path
):
    from fliprm.scale import score_file_ray

    path = _pairs_file(tmp_path)
    # Bit-equal rewards are promised in exact mode only: with prompt-cache reuse, a prefix
    # computed for an earlier prompt (other tests share the fixture's backend) rounds
    # differently from a fresh prefill, and a greedy near-tie can flip (CI saw 0.35 vs 0.57).
    # Same thread count on both sides: llama.cpp's float rounding depends on it too.
    # explain: the default reward (pmi) plus the inferred instruction, so both are compared
    config = RewardConfig(**SETTINGS, n_ctx=embedded_backend.n_ctx, exact=True, explain=True)
    runtime = RuntimeOptions(n_threads=embedded_backend.n_threads)
    single = FlipReward(config=config, runtime=runtime)
    try:
        expected = single.score(*zip(*PAIRS))
    finally:
        single.close()
    assert all(r.ok and r.inferred_instruction for r in expected)

    out = tmp_path / "out"
    written: list[int] = []
    run = lambda: score_file_ray(
        path, out, config=config, runtime=runtime, num_actors=1, num_cpus_per_actor=2, batch_size=2,
        shard_size=2, progress=False, on_shard=lambda r: written.append(r.index),
    )
    first = run()
    assert (first.shards_written, first.scored, first.errors) == (3, 5, 0)
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)]
    assert [r["reward"] for r in rows] == [r.reward for r in expected]
    assert [r["inferred_instruction"] for r in rows] == [r.inferred_instruction for r in expected]

    # An interrupted run: shard 1 never got written. The rerun must redo that shard only.
    mtimes = {k: shard_path(out, k).stat().st_mtime_ns for k in (0, 2)}
    shard_path(out, 1).unlink()
    written.clear()
    second = run()
    assert written == [1]
    assert (second.shards_skipped, second.shards_written, second.scored) == (2, 1, 2)
    assert {k: shard_path(out, k).stat().st_mtime_ns for k in (0, 2)} == mtimes
    assert [r["reward"] for r in _rows(out)] == [r.reward for r in expected]

    # Nothing left to do: no actor is even started.
    assert score_file_ray(path, out, config=config, runtime=runtime, shard_size=2,
                          progress=False).shards_skipped == 3


@pytest.mark.slow
def test_one_actor_per_replica_url_over_http(local_ray, tmp_path):
    from fliprm.scale import score_file_ray
    from fliprm.scale._ray import FlipBatchScorer, _url_pool

    reply = json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "What is the capital of Japan?"})
    replicas = [OpenAIStandIn(lambda body: chat_reply(reply)) for _ in range(2)]
    urls = [r.url for r in replicas]
    try:
        # Each scorer built with the pool takes the next URL: two actors, two replicas.
        pool = _url_pool(local_ray, urls)
        # the stand-ins answer FLIP JSON and give no log-probabilities: the F1 method, named
        config = RewardConfig(backend="openai:m", method="f1")
        got = [FlipBatchScorer(config, url_pool=pool).base_url for _ in range(3)]
        assert got == [urls[0], urls[1], urls[0]]

        path = _pairs_file(tmp_path)
        s = score_file_ray(path, tmp_path / "out", config=config, base_urls=urls,
                           num_cpus_per_actor=0.5, batch_size=2, shard_size=2, progress=False)
        rows = _rows(tmp_path / "out")
        assert (s.scored, s.errors) == (5, 0)
        assert rows[0]["reward"] == 1.0  # the inferred instruction is PAIRS[0]'s, word for word
        # the model is its name, not the replica that served it: replicas are interchangeable
        assert {r["model"] for r in rows} == {"m"}
        assert sum(len(r.bodies) for r in replicas) == 5
    finally:
        for r in replicas:
            r.close()


# ---- the CLI: fliprm score --ray ----------------------------------------------------------------


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    return CliRunner().invoke(score_app(), ["score", *args])


def test_cli_ray_flags_reach_score_file_ray(tmp_path, monkeypatch):
    """The single-machine flags (fields, template, decoding, backend) map onto the Ray call."""
    import fliprm.scale
    from fliprm.config import RayOptions
    from fliprm.scale import RaySummary

    seen: dict = {}

    def fake_score_file_ray(input, output_dir, **kwargs):
        seen.update(kwargs, input=input, output_dir=output_dir)
        return RaySummary(shards_total=1, shards_written=1, scored=3, reward_sum=1.5)

    monkeypatch.setattr(fliprm.scale, "score_file_ray", fake_score_file_ray)
    path = _pairs_file(tmp_path)
    res = _invoke([str(path), "-o", str(tmp_path / "out"), "--ray", "--ray-address", "auto",
                   "-b", "openai:m", "--base-url", "http://a:8000/v1", "--base-url", "http://b:8000/v1",
                   "--backend-api-key", "k", "--concurrency", "32", "--cpus-per-actor", "0.25",
                   "--batch-size", "32", "--shard-size", "500", "--instruction-field", "q",
                   "--response-field", "a", "--template", "flip-short", "--max-tokens", "64",
                   "--parse-failure", "error", "--seed", "3", "--cache", str(tmp_path / "c.sqlite"),
                   "--limit", "10", "--retry-errors"])
    assert res.exit_code == 0, res.output
    assert seen["input"] == path and seen["output_dir"] == tmp_path / "out"
    cfg, rt = seen["config"], seen["runtime"]
    assert cfg.backend == "openai:m" and seen["ray_options"].address == "auto"
    # two URLs: one actor per replica, so no fixed actor count
    assert seen["base_urls"] == ["http://a:8000/v1", "http://b:8000/v1"]
    assert seen["ray_options"] == RayOptions(address="auto", cpus_per_actor=0.25, batch_size=32,
                                             shard_size=500)
    assert (rt.api_key, rt.concurrency) == ("k", 32)
    assert seen["fields"] == Fields(instruction="q", response="a")
    assert (cfg.template, cfg.max_tokens, cfg.parse_failure, cfg.seed) == ("flip-short", 64, "error", 3)
    assert seen["cache"] == str(tmp_path / "c.sqlite")
    assert (seen["limit"], seen["retry_errors"]) == (10, True)

    # One URL is shared by every actor (a server or a load balancer); defaults otherwise.
    seen.clear()
    res = _invoke([str(path), "-o", str(tmp_path / "out"), "--ray", "-b", "openai:m",
                   "--base-url", "http://lb:8000/v1", "--actors", "4"])
    assert res.exit_code == 0, res.output
    assert seen["runtime"].base_url == "http://lb:8000/v1" and seen["base_urls"] is None
    opts = seen["ray_options"]
    assert (opts.actors, opts.cpus_per_actor, opts.batch_size, opts.shard_size) == (4, 1.0, 16, 1000)
    assert seen["cache"] is None  # the default cache folder is the driver's


def test_cli_exact_and_mask_echo_reach_the_actors_and_exact_needs_the_embedded_model(tmp_path, monkeypatch):
    import fliprm.scale
    from fliprm.scale import RaySummary

    seen: dict = {}
    monkeypatch.setattr(fliprm.scale, "score_file_ray", lambda i, o, **kw: seen.update(kw) or RaySummary())
    path = _pairs_file(tmp_path)
    res = _invoke([str(path), "-o", str(tmp_path / "out"), "--ray", "--exact", "--mask-echo"])
    assert res.exit_code == 0, res.output
    assert seen["config"].backend == "embedded" and seen["config"].exact is True
    assert seen["config"].mask_echo is True
    res = _invoke([str(path), "-o", str(tmp_path / "out"), "--ray", "--exact", "-b", "openai:m",
                   "--base-url", "http://lb:8000/v1"])
    assert res.exit_code == 2 and "exact applies to the embedded model" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["--actors", "2"], "--actors only apply with --ray"),
    (["--shard-size", "10", "--ray-address", "auto"], "--ray-address, --shard-size only apply"),
    (["--base-url", "http://a/v1", "--base-url", "http://b/v1"], "need --ray"),
    (["--ray", "--shard-size", "0"], "must be positive"),
])
def test_cli_ray_usage_errors(tmp_path, args, message):
    res = _invoke([str(_pairs_file(tmp_path)), "-o", str(tmp_path / "out"), "-b", "fake", *args])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


def test_cli_ray_rejects_a_single_pair_and_csv(tmp_path):
    res = _invoke(["-i", "x", "-r", "y", "--ray"])
    assert res.exit_code == 2 and "--ray scores a file" in " ".join(res.output.split())
    csv = tmp_path / "in.csv"
    csv.write_text("id,instruction,response\na,x,y\n", encoding="utf-8")
    res = _invoke([str(csv), "-o", str(tmp_path / "out"), "--ray", "-b", "fake"])
    assert res.exit_code == 2 and "convert the CSV first" in res.output


def test_cli_ray_without_ray_installed_says_what_to_install(tmp_path, monkeypatch):
    import sys

    for mod in ("ray", "ray.data"):  # None in sys.modules makes `import ray` fail
        monkeypatch.setitem(sys.modules, mod, None)
    res = _invoke([str(_pairs_file(tmp_path)), "-o", str(tmp_path / "out"), "--ray", "-b", "fake"])
    assert res.exit_code == 2
    assert "pip install 'fliprm[ray]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()  # failed before touching the output


@pytest.mark.slow
def test_cli_ray_fake_backend_matches_single_machine_cli_and_resumes(local_ray, tmp_path):
    """`fliprm score --ray` gives the same records as `fliprm score` and skips finished shards."""
    rows: list[dict | str] = [{"id": f"p{i}", "instruction": x, "response": y}
                              for i, (x, y) in enumerate(PAIRS)]
    rows[2:2] = ["{broken", {"id": "nr", "instruction": "no response"}]
    path = _write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["-b", "fake", "--template", "flip-short", "--max-tokens", "64"]

    single = _invoke([str(path), "-o", str(tmp_path / "single.jsonl"), "--no-cache", *common])
    assert single.exit_code == 1, single.output  # two bad lines
    out = tmp_path / "ray"
    res = _invoke([str(path), "-o", str(out), "--ray", "--shard-size", "3",
                   "--cpus-per-actor", "0.5", "--batch-size", "2", *common])
    assert res.exit_code == 1, res.output
    assert "shard 00002 written" in res.output

    expected = {r["line"]: r for r in (json.loads(line) for line in
                (tmp_path / "single.jsonl").read_text(encoding="utf-8").splitlines())}
    got = {r["line"]: r for r in _rows(out)}
    assert set(got) == set(expected) and len(got) == 7
    keys = ("id", "reward", "precision", "recall", "inferred_instruction", "parse_ok", "error",
            "template", "prompt_tokens", "completion_tokens")
    for line, rec in expected.items():
        assert {k: got[line][k] for k in keys} == {k: rec[k] for k in keys}, line
    assert got[3]["id"] is None and got[3]["error"].startswith("line 3: broken JSON")
    assert got[4]["id"] == "nr" and got[4]["error"] == "line 4: field 'response' is missing"
    assert any(r["reward"] for r in got.values())  # not a trivially all-zero comparison

    # Rerun: every shard is on disk, so nothing is scored or rewritten.
    mtimes = [p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.parquet"))]
    again = _invoke([str(path), "-o", str(out), "--ray", "--shard-size", "3",
                     "--cpus-per-actor", "0.5", *common])
    # the two error rows are still in the output: counted, and the exit code says so
    assert again.exit_code == 1, again.output
    assert "shard 0" not in again.output
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.parquet"))] == mtimes
