"""RewardBench 2: scoring rules, data loading, the runner, the report and the CLI."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fliprm.backends.fake import FakeBackend
from fliprm.cli import _eval_common as eval_common_cli
from fliprm.cli import eval as eval_cli
from fliprm.config import RewardConfig
from fliprm.errors import ConfigError, InputError
from fliprm.eval._common import judge_factory
from fliprm.eval.rb2_data import RB2Item, load_items
from fliprm.eval.rb2_report import summarize, write_report
from fliprm.eval.rb2_scoring import item_credit, prompt_stats, ties_score
from fliprm.eval.rewardbench2 import arun_rewardbench2
from fliprm.records import read_records
from helpers_fliprm import FIXTURES as FIX
from helpers_fliprm import Borrowed

#: the plots come with the eval extra (matplotlib); without it the reports are text only
HAS_PLOTS = importlib.util.find_spec("matplotlib") is not None
HAS_PARQUET = importlib.util.find_spec("pyarrow") is not None

PARQUET, JSONL = FIX / "rb2_tiny.parquet", FIX / "rb2_tiny.jsonl"


# ---- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top,expected",
    [([0], 1.0), ([1], 0.0), ([0, 3], 0.5), ([1, 2], 0.0), ([0, 1, 2], 1 / 3), ([0, 1, 2, 3], 0.25)],
)
def test_item_credit(top, expected):
    assert item_credit(top) == pytest.approx(expected)


def test_item_credit_several_correct():
    assert item_credit([0, 1, 4], num_correct=2) == pytest.approx(2 / 3)


def test_prompt_stats_and_none_ranks_last():
    s = prompt_stats([0.8, 0.6, 0.7, 0.3], 2)
    assert not s.accurate and s.correct_spread == pytest.approx(0.2)
    assert s.correct_incorrect_margin == pytest.approx(-0.1)
    assert prompt_stats([1.0, None], 1).accurate
    assert prompt_stats([None, None], 1).correct_incorrect_margin == -math.inf


def test_ties_formula_by_hand():
    # ref: margin 0.4 (accurate); tied: spread 0.2, margin -0.1 (not accurate)
    s = ties_score([("ref:1", [0.9, 0.5, 0.1], 1), ("tied:1", [0.8, 0.6, 0.7, 0.3], 2)])
    assert s["ref_accuracy"] == 1.0 and s["tied_accuracy"] == 0.0
    assert s["correctness_preferred"] == 0.0 and s["correctness_preferred_hard"] == 0.0
    assert s["correctness_margin_score"] == pytest.approx(math.tanh(-0.1 / 0.2 - 1))
    assert s["score"] == pytest.approx(0.30 + 0.01 * math.tanh(-1.5))


def test_ties_formula_zero_spread_and_unpaired_prompts():
    # equal correct scores: spread 0, margin 0.4 -> ratio +inf -> tanh 1 (numpy semantics)
    s = ties_score([("ref:2", [0.5, 0.1], 1), ("tied:2", [0.5, 0.5, 0.1], 2), ("ref:3", [0.0, 1.0], 1)])
    assert s["ref_accuracy"] == 0.5 and s["tied_accuracy"] == 1.0 and s["prompts"] == 1
    assert s["score"] == pytest.approx(0.3 * 1 + 0.3 * 0.5 + 0.2 + 0.2 + 0.01)


# ---- data -------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_PARQUET, reason="parquet needs pyarrow (the files extra)")
def test_parquet_and_jsonl_load_the_same_default_subsets():
    a, b = load_items(PARQUET), load_items(JSONL)
    assert [(i.id, i.subset, i.candidates) for i in a] == [(i.id, i.subset, i.candidates) for i in b]
    assert {i.subset for i in a} == {"Focus", "Math"}  # Safety and Ties are not default
    assert a[0].candidates[0] == "The capital of France is Paris." and a[0].num_correct == 1


def test_subset_filter_limit_and_ties():
    items = load_items(JSONL, subsets=["Focus", "Ties"], limit=1)
    assert [(i.id, i.subset) for i in items] == [("1", "Focus"), ("ref:7", "Ties")]
    tied = load_items(JSONL, subsets=["Ties"])[1]
    assert tied.num_correct == 3 and len(tied.candidates) == 5
    assert len(load_items(JSONL, subsets=None)) == 6


def test_alpacaeval_style_string_chosen_without_subset():
    items = load_items(FIX / "alpaca_tiny.jsonl")
    assert items[0].chosen == ["Paris is the capital of France."]
    assert items[0].subset == "alpaca_tiny" and len(items) == 2


def test_bad_rows_are_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "x", "chosen": ["y"]}\n')
    with pytest.raises(InputError, match="row 1.*rejected"):
        load_items(p)


def test_hub_unreachable_gives_clear_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match=r"--data rb2\.parquet") as e:
        load_items(None)
    assert "allenai/reward-bench-2" in str(e.value)


# ---- runner + report --------------------------------------------------------------------------


def _pointwise_reply(req):
    text = req.messages[-1]["content"]
    return json.dumps({"REASONING": "", "SCORE": 9 if "Paris" in text or "5." in text else 2})


async def test_runner_scores_resumes_and_repeats_runs(tmp_path):
    items = load_items(JSONL)  # 2 Focus + 1 Math
    fb = FakeBackend(_pointwise_reply)
    make = judge_factory(fb, RewardConfig(max_tokens=64))
    out = tmp_path / "records.jsonl"
    recs = await arun_rewardbench2(items, make, ["pointwise", "longest"], runs=2, out=out)
    assert len(recs) == 2 * 2 * 3 and len(fb.calls) == 2 * 3 * 4
    by = {(r["method"], r["run"], r["item_id"]): r for r in recs}
    assert by[("pointwise", 0, "1")]["credit"] == 1.0  # Paris wins outright
    assert by[("pointwise", 0, "2")]["credit"] == 0.25  # all rated 2: 4-way tie
    assert by[("pointwise", 1, "3")]["seed"] == 1
    again = await arun_rewardbench2(items, make, ["pointwise", "longest"], runs=2, out=out)
    assert again == [] and len(fb.calls) == 24  # everything was done: no new calls
    assert len([r for _, r in read_records(out)]) == 12


async def test_unparseable_listwise_earns_a_quarter(tmp_path):
    items = load_items(JSONL, subsets=["Focus"], limit=1)
    make = judge_factory(FakeBackend(lambda r: "no idea"))
    (rec,) = await arun_rewardbench2(items, make, ["listwise"])
    assert rec["credit"] == 0.25 and rec["parse_failures"] == 1 and rec["tie"]


async def test_ties_subset_uses_the_formula_and_skips_pairwise(tmp_path):
    items = load_items(JSONL, subsets=["Ties"])
    make = judge_factory(FakeBackend([]))
    recs = await arun_rewardbench2(items, make, ["longest", "pairwise"])
    assert {r["method"] for r in recs} == {"longest"} and all(r["credit"] is None for r in recs)
    s = summarize(recs)["methods"]["longest"]
    # longest loses both prompts: ref margin len("Red.")-len("Green is ...") = -28, tied
    # margin 4-7 = -3 with spread 7-4 = 3, so only the (negative) margin term remains
    assert s["ties"]["ref_accuracy"] == 0.0 and s["ties"]["tied_accuracy"] == 0.0
    assert s["ties"]["score"] == pytest.approx(0.01 * math.tanh(-28 / 3 - 1))


def _rec(method, item, subset, credit, tie=False, words=50, run=0):
    return {"method": method, "run": run, "item_id": item, "subset": subset, "credit": credit,
            "tie": tie, "parse_failures": 0, "calls": 4, "prompt_tokens": 100,
            "completion_tokens": 20, "seconds": 2.0, "errors": [], "mean_words": words,
            "scores": [], "num_correct": 1}


def test_summary_means_subsets_and_gain(tmp_path):
    recs = [_rec("flip", "1", "A", 1.0), _rec("flip", "2", "A", 0.0), _rec("flip", "3", "B", 1.0),
            _rec("pointwise", "1", "A", 0.25, tie=True), _rec("pointwise", "2", "A", 0.25, tie=True),
            _rec("pointwise", "3", "B", 0.5, tie=True, words=400)]
    s = write_report(recs, tmp_path, meta={"data": "x"})
    assert s["methods"]["flip"]["accuracy"] == pytest.approx(0.75)  # mean of A=0.5, B=1.0
    assert s["methods"]["pointwise"]["tie_rate"] == 1.0
    assert s["flip_relative_gain"]["pointwise"] == pytest.approx((0.75 - 0.375) / 0.375)
    assert s["methods"]["pointwise"]["length_buckets"]["250-499"]["n"] == 1
    report = (tmp_path / "report.md").read_text()
    assert "| flip | **75.0**" in report and "+100.0%" in report
    if HAS_PLOTS:
        assert (tmp_path / "accuracy_by_subset.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["meta"] == {"data": "x"}


# ---- CLI --------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    eval_cli.register(app)

    @app.command()
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    return app


def _check_outputs(out: Path) -> dict:
    plots = ("accuracy_by_subset.png", "accuracy_by_length.png") if HAS_PLOTS else ()
    for name in ("report.md", "results.json", "records.jsonl", *plots):
        assert (out / name).is_file(), name
    return json.loads((out / "results.json").read_text())


def test_cli_fake_backend(tmp_path):
    out = tmp_path / "rb2"
    args = ["eval", "rewardbench2", "--data", str(PARQUET if HAS_PARQUET else JSONL), "--methods", "flip,pointwise",
            "--limit", "2", "--out", str(out), "--backend", "fake"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    results = _check_outputs(out)
    assert set(results["methods"]) == {"flip", "pointwise"}
    assert results["methods"]["flip"]["n_items"] == 3  # Focus 2 + Math 1


def test_cli_without_data_or_hub_fails_helpfully(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "--data" in res.output and "reward-bench-2" in res.output


def test_cli_rejects_unknown_method(tmp_path):
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--data", str(JSONL),
                                      "--methods", "flip,oracle", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "oracle" in res.output


@pytest.mark.model
def test_cli_real_model(embedded_backend, tmp_path, monkeypatch):
    # reuse the session's model instead of loading a second copy
    monkeypatch.setattr(eval_common_cli, "build_backend", lambda *a: Borrowed(embedded_backend))
    out = tmp_path / "rb2"
    args = ["eval", "rewardbench2", "--data", str(PARQUET), "--methods", "flip,pointwise",
            "--subsets", "Focus", "--limit", "1", "--max-tokens", "128", "--out", str(out)]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    results = _check_outputs(out)
    flip = results["methods"]["flip"]
    assert flip["n_items"] == 1 and flip["errors"] == 0 and flip["tokens_per_item"] > 0




def test_runner_doc_example_runs():
    item = RB2Item("x", "Say hi.", ["Hello there!"], ["hi", "yo", "hey"], "Focus")
    from fliprm.judges import LongestJudge

    (rec,) = asyncio.run(arun_rewardbench2([item], lambda m, s: LongestJudge(seed=s), ["longest"]))
    assert rec["credit"] == 1.0 and rec["pick"] == 0


# ---- issue 3 checks: offline hub, report contents ------------------------------------------------


def test_cli_offline_hub_without_data_fails_fast_with_advice(tmp_path):
    # HF offline mode skips our reachability probe, so `datasets` itself must fail, not hang.
    # A subprocess, because huggingface_hub reads HF_HUB_OFFLINE once, at import.
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # an empty cache: nothing to fall back on
    proc = subprocess.run([sys.executable, "-m", "fliprm.cli.main", "eval", "rewardbench2",
                           "--out", str(tmp_path / "out")],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--data rb2.parquet" in proc.stderr and "allenai/reward-bench-2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "report.md").exists()


def test_cli_without_datasets_package_fails_with_advice(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "pip install datasets" in res.output and "--data rb2.parquet" in res.output


def test_score_by_length_splits_chosen_and_rejected_by_each_answers_length(tmp_path):
    recs = [_rec("flip", "1", "A", 1.0) | {"scores": [0.9, 0.2, None], "candidate_words": [30, 300, 40]},
            _rec("flip", "2", "A", 0.0) | {"scores": [0.1, 0.5], "candidate_words": [600, 20]},
            _rec("longest", "1", "A", 1.0) | {"scores": [5.0, 1.0], "candidate_words": [30, 300]}]
    s = write_report(recs, tmp_path)
    flip = s["methods"]["flip"]["score_by_length"]
    assert flip["<100"] == {"chosen": 0.9, "rejected": 0.5, "n_chosen": 1, "n_rejected": 1}
    assert flip["250-499"]["n_chosen"] == 0 and flip["250-499"]["rejected"] == 0.2
    assert flip["500+"]["chosen"] == 0.1 and flip["500+"]["n_rejected"] == 0
    assert "100-249" not in flip  # the None score (a failed call) is left out, not counted as 0
    assert "score_by_length" not in s["methods"]["longest"]  # its score is the length itself
    report = (tmp_path / "report.md").read_text()
    assert "## Score by answer length" in report
    assert "0.90 / 0.50 (n=1/1)" in report and "- / 0.20 (n=0/1)" in report


def test_cli_report_has_every_section_issue_3_asks_for(tmp_path):
    out = tmp_path / "rb2"
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--data", str(JSONL), "--methods",
                                      "flip,pointwise,longest", "--out", str(out), "--backend", "fake"])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    for heading in ("## Accuracy", "## Ties, parse failures and cost",
                    "## FLIP's relative gain over each baseline",
                    "## Accuracy by mean answer length", "## Score by answer length"):
        assert heading in report, heading
    for column in ("tie rate %", "parse failures % of calls", "tokens / item", "seconds / item"):
        assert column in report, column
    if HAS_PLOTS:
        assert "![accuracy_by_subset.png](accuracy_by_subset.png)" in report
        assert (out / "accuracy_by_subset.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    flip = results["methods"]["flip"]
    assert all(len(sub["ci"]) == 2 for sub in flip["subsets"].values())
    assert set(results["flip_relative_gain"]) == {"pointwise", "longest"}
    assert flip["score_by_length"]["<100"]["n_chosen"] == 3  # 3 items, one chosen answer each
