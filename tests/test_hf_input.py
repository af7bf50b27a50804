"""Hugging Face ``datasets`` input for score, eval and rerank: folders written by
save_to_disk (tested with datasets itself) and hub names (offline: the same advice as eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fliprm.cli import eval as eval_cli
from fliprm.cli import rerank as rerank_cli
from fliprm.cli import score as score_cli

datasets = pytest.importorskip("datasets")
FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLIPRM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: "offline"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _app() -> typer.Typer:
    app = typer.Typer()
    for mod in (eval_cli, rerank_cli, score_cli):
        mod.register(app)
    return app


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_score_reads_a_dataset_saved_to_disk(tmp_path):
    ds = datasets.Dataset.from_list([{"instruction": "say hi", "response": "hi there"},
                                     {"instruction": "count", "response": "one two"}])
    ds.save_to_disk(str(tmp_path / "pairs_ds"))
    out = tmp_path / "s.jsonl"
    args = ["score", str(tmp_path / "pairs_ds"), "-o", str(out), "-b", "fake", "--no-cache",
            "--method", "f1", "--keep-columns", "instruction"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    recs = _rows(out)
    assert [(r["line"], r["instruction"]) for r in recs] == [(1, "say hi"), (2, "count")]
    assert all(r["error"] is None for r in recs)
    manifest = json.loads((tmp_path / "s.jsonl.fliprm.json").read_text())
    assert manifest["input"]["path"] == str(tmp_path / "pairs_ds")
    # a rerun resumes: the dataset's parquet copy has the same identity
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert len(_rows(out)) == 2


def test_rerank_reads_a_dataset_dict_and_needs_a_split_when_there_are_several(tmp_path):
    rows = [json.loads(x) for x in (FIX / "bon_tiny.jsonl").read_text().splitlines()]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                               "test": datasets.Dataset.from_list(rows[:2])})
    dd.save_to_disk(str(tmp_path / "bon_dd"))
    base = ["rerank", str(tmp_path / "bon_dd"), "--methods", "longest", "--label-field",
            "preference"]
    res = CliRunner().invoke(_app(), [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--split" in res.output and "train, test" in res.output
    res = CliRunner().invoke(_app(), [*base, "--split", "test", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    picks = _rows(tmp_path / "b" / "longest.jsonl")
    assert len(picks) == 2 and [p["picked_label"] for p in picks] == [1.9, 1.8]
    report = (tmp_path / "b" / "bon_report.md").read_text()
    assert "# Best-of-N reranking on bon_dd" in report


def test_eval_reads_a_dataset_saved_to_disk(tmp_path):
    rows = [json.loads(x) for x in (FIX / "rb2_tiny.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "rb2_ds"))
    out = tmp_path / "rb2"
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--data", str(tmp_path / "rb2_ds"),
                                      "--methods", "longest", "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["longest"]["n_items"] == 3  # Focus 2 + Math 1, as from the file
    assert results["meta"]["data"] == str(tmp_path / "rb2_ds")


@pytest.mark.parametrize("cmd", [["score", "someone/pairs", "-o", "OUT/s.jsonl", "-b", "fake"],
                                 ["rerank", "someone/pairs", "--out", "OUT"],
                                 ["eval", "rewardbench2", "--data", "someone/pairs",
                                  "--out", "OUT"]])
def test_hub_name_offline_is_one_error_with_advice(tmp_path, cmd):
    cmd = [c.replace("OUT", str(tmp_path / "o")) for c in cmd]
    res = CliRunner().invoke(_app(), [*cmd, "--split", "train"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "cannot load someone/pairs from the Hugging Face hub" in text
    assert "load_dataset('someone/pairs', split='train').to_parquet('data.parquet')" in text


def test_missing_file_is_not_taken_for_a_hub_name(tmp_path):
    res = CliRunner().invoke(_app(), ["score", str(tmp_path / "nope.jsonl"), "-o",
                                      str(tmp_path / "s.jsonl"), "-b", "fake"])
    assert res.exit_code == 2 and "input file not found" in res.output
