"""Backward likelihood on every entry point, with the real embedded model (small n).

``fliprm eval rewardbench2 --methods flip-likelihood``, ``fliprm rerank --methods
flip-likelihood``, ``fliprm serve --method likelihood`` (and so every RL adapter through it) and
the Ray path all score log p(instruction | response) with the instruction teacher-forced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fliprm import FlipReward, RewardConfig, RuntimeOptions
from helpers_fliprm import Borrowed

pytestmark = pytest.mark.model
FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def borrowed(embedded_backend, monkeypatch):
    """eval and rerank use the session's model instead of loading another copy."""
    from fliprm.cli import _eval_common

    monkeypatch.setattr(_eval_common, "build_backend", lambda *a, **k: Borrowed(embedded_backend))
    return embedded_backend


def _cli(*args: str):
    from fliprm.cli.main import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


def test_eval_rewardbench2_runs_flip_likelihood(borrowed, tmp_path):
    out = tmp_path / "rb2"
    res = _cli("eval", "rewardbench2", "--data", str(FIX / "rb2_tiny.jsonl"), "--methods",
               "flip-likelihood", "--subsets", "Focus", "--limit", "1", "-o", str(out))
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    m = results["methods"]["flip-likelihood"]
    assert m["n_items"] == 1 and m["errors"] == 0
    assert results["meta"]["settings"]["flip-likelihood"]["method"] == "likelihood"
    rec = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert all(s is not None and 0 < s <= 1 for s in rec["scores"])
    assert rec["credit"] == 1.0  # "The capital of France is Paris." over bananas and dogs


def test_rerank_runs_flip_likelihood(borrowed, tmp_path):
    res = _cli("rerank", str(FIX / "bon_tiny.jsonl"), "--methods", "flip-likelihood",
               "--limit", "1", "--label-field", "preference", "-o", str(tmp_path / "bon"))
    assert res.exit_code == 0, res.output
    (rec,) = [json.loads(x) for x in (tmp_path / "bon" / "flip-likelihood.jsonl").read_text().splitlines()]
    assert rec["errors"] == [] and all(s is not None for s in rec["scores"])
    assert rec["pick"] != 2  # never "Bananas."


def test_serve_scores_likelihood(embedded_backend):
    pytest.importorskip("fastapi")
    import httpx

    from fliprm.server import ServerThread, create_app

    rm = FlipReward(embedded_backend, config=RewardConfig.preset("rl", method="likelihood",
                                                                 n_ctx=embedded_backend.n_ctx))
    items = [{"instruction": "Name the capital of France.", "response": "Paris is the capital of France."},
             {"instruction": "Write a haiku about the sea.", "response": "Paris is the capital of France."}]
    with ServerThread(create_app(rm)) as srv:
        r = httpx.post(srv.url + "/v1/score", json={"items": items}, timeout=300)
        rl = httpx.post(srv.url + "/get_reward", timeout=300, json={
            "query": ["Q: Name the capital of France.\nA: Paris is the capital of France."],
            "prompts": ["Q: Name the capital of France.\nA: "],
            "labels": ["Name the capital of France."]})
    own, other = r.json()["results"]
    assert own["method"] == "likelihood" and own["error"] is None and own["logprob"] < 0
    assert own["reward"] > other["reward"]
    assert rl.status_code == 200 and 0 < rl.json()["rewards"][0] <= 1


@pytest.mark.slow
def test_ray_path_scores_likelihood(embedded_backend, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from fliprm.scale import score_file_ray

    inp = tmp_path / "in.jsonl"
    pairs = [("Name the capital of France.", "Paris is the capital of France."),
             ("Write a haiku about the sea.", "Paris is the capital of France.")]
    inp.write_text("".join(json.dumps({"instruction": x, "response": y}) + "\n" for x, y in pairs))
    # exact mode on both sides (every prompt evaluated from scratch, the same thread count):
    # the actor's fresh model and this process's must give the same bits. With prefix reuse
    # the values would depend on what each model scored before (measured: 0.9% apart with
    # forced steps, 3.2% with the one-pass route on these 6-token instructions).
    config = RewardConfig(method="likelihood", n_ctx=embedded_backend.n_ctx, exact=True)
    local = FlipReward(config=config, n_threads=embedded_backend.n_threads)
    try:
        expected = local.score(*zip(*pairs))
    finally:
        local.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = score_file_ray(inp, tmp_path / "out", config=config, progress=False,
                           runtime=RuntimeOptions(n_threads=embedded_backend.n_threads))
    finally:
        ray.shutdown()
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert s.errors == 0 and [r["method"] for r in rows] == ["likelihood"] * 2
    assert [r["reward"] for r in rows] == [r.reward for r in expected]
    assert rows[0]["reward"] > rows[1]["reward"]
