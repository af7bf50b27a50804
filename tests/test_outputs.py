"""fliprm score outputs: the format the suffix names, kept input columns, sorted by line, and a
missing required column refused before any scoring (issue 23)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend
from fliprm.batch import score_file
from fliprm.cli import score as score_cli
from fliprm.config import RewardConfig
from fliprm.errors import ConfigError
from helpers_fliprm import shown_response

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def echo_reward() -> FlipReward:
    # f1 with an echo of the response's first line: reward 1.0 when it equals the instruction
    def reply(req):
        resp = shown_response(req).split("\n")[0]
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": resp})

    return FlipReward(FakeBackend(reply), config=RewardConfig(method="f1", mask_echo=False))


ROWS = [
    {"id": "a", "instruction": "say hi", "response": "say hi", "topic": "greet"},
    {"id": "b", "instruction": "say bye", "response": "something else", "topic": "leave"},
    {"id": "c", "instruction": "count", "response": "count", "topic": "math"},
]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_parquet_output_is_parquet_sorted_by_line_with_a_resumable_working_file(tmp_path):
    inp, out = _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "scores.parquet"
    asyncio.run(score_file(echo_reward(), inp, out, keep_columns=["instruction", "topic"]))
    table = pq.read_table(out).to_pylist()
    assert [r["line"] for r in table] == [1, 2, 3]
    assert [r["instruction"] for r in table] == ["say hi", "say bye", "count"]
    assert [r["topic"] for r in table] == ["greet", "leave", "math"]
    assert [r["reward"] for r in table] == [1.0, pytest.approx(0.0), 1.0]
    # the crash-safe JSONL record stays beside it: a rerun resumes from it and rewrites the file
    partial = tmp_path / "scores.parquet.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 3
    s = asyncio.run(score_file(echo_reward(), inp, out, keep_columns=["instruction", "topic"]))
    assert s.skipped == 3 and s.scored == 0 and len(pq.read_table(out)) == 3


def test_csv_output_is_csv_and_nested_values_are_json(tmp_path):
    rows = [{"id": "m", "messages": [{"role": "user", "content": "say hi"}], "response": "say hi"}]
    inp, out = _jsonl(tmp_path / "in.jsonl", rows), tmp_path / "scores.csv"
    asyncio.run(score_file(echo_reward(), inp, out, keep_columns="all"))
    with open(out, encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["line"] == "1" and row["id"] == "m" and float(row["reward"]) == 1.0
    assert json.loads(row["messages"]) == rows[0]["messages"] and row["response"] == "say hi"


def test_keep_all_renames_columns_that_clash_with_output_fields(tmp_path):
    rows = [{"instruction": "say hi", "response": "say hi", "reward": 5}]
    inp, out = _jsonl(tmp_path / "in.jsonl", rows), tmp_path / "s.jsonl"
    asyncio.run(score_file(echo_reward(), inp, out, keep_columns="all"))
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["reward"] == 1.0 and rec["input.reward"] == 5 and rec["response"] == "say hi"


def test_jsonl_output_is_sorted_by_line_when_items_finish_out_of_order(tmp_path):
    # the first item is slow: with concurrency it finishes last, yet the file ends in line order
    def reply(req):
        resp = shown_response(req).split("\n")[0]
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": resp})

    class Slow(FakeBackend):
        async def generate(self, request):
            if "say hi" in shown_response(request):
                await asyncio.sleep(0.3)
            return await super().generate(request)

    reward = FlipReward(Slow(reply), config=RewardConfig(method="f1", mask_echo=False), concurrency=8)
    inp, out = _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "s.jsonl"
    asyncio.run(score_file(reward, inp, out))
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == [1, 2, 3]


def test_unknown_output_suffix_is_refused_before_any_work(tmp_path):
    inp = _jsonl(tmp_path / "in.jsonl", ROWS)
    with pytest.raises(ConfigError, match=r"unknown output suffix '\.xlsx'"):
        asyncio.run(score_file(echo_reward(), inp, tmp_path / "s.xlsx"))
    assert list(tmp_path.iterdir()) == [inp]


def _app() -> typer.Typer:
    app = typer.Typer()
    score_cli.register(app)

    @app.command()
    def _noop() -> None:
        pass

    return app


def test_cli_missing_instruction_column_is_one_usage_error(tmp_path):
    rows = [{"prompt": "say hi", "response": "say hi"}, {"prompt": "x", "response": "y"}]
    inp, out = _jsonl(tmp_path / "in.jsonl", rows), tmp_path / "s.jsonl"
    res = CliRunner().invoke(_app(), ["score", str(inp), "-o", str(out), "-b", "fake",
                                      "--no-cache", "--method", "f1"])
    assert res.exit_code == 2, res.output
    assert "no 'instruction' column" in res.output and "--instruction-field" in res.output
    assert "prompt" in res.output and "--retry-errors" not in res.output
    assert not out.exists()


def test_cli_keep_columns_and_parquet(tmp_path):
    inp, out = _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "s.parquet"
    res = CliRunner().invoke(_app(), ["score", str(inp), "-o", str(out), "-b", "fake",
                                      "--no-cache", "--method", "f1",
                                      "--keep-columns", "instruction,response"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out).to_pylist()
    assert [(r["line"], r["instruction"], r["response"]) for r in table] == [
        (1, "say hi", "say hi"), (2, "say bye", "something else"), (3, "count", "count")]
    res = CliRunner().invoke(_app(), ["score", str(inp), "-o", str(tmp_path / "t.jsonl"), "-b",
                                      "fake", "--no-cache", "--keep-columns", "nope"])
    assert res.exit_code == 2 and "--keep-columns" in res.output and "'nope'" in res.output


def test_parquet_input_missing_column_is_found_from_the_schema(tmp_path):
    inp, out = tmp_path / "in.parquet", tmp_path / "s.jsonl"
    pq.write_table(pa.table({"prompt": ["say hi"], "response": ["say hi"]}), inp)
    with pytest.raises(ConfigError, match=r"no 'instruction' column \(columns: prompt, response\)"):
        asyncio.run(score_file(echo_reward(), inp, out))
    pq.write_table(pa.table({"instruction": ["say hi"], "response": ["say hi"]}), inp)
    s = asyncio.run(score_file(echo_reward(), inp, out))
    assert s.scored == 1 and s.errors == 0


def test_csv_missing_response_column_is_one_usage_error(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "s.jsonl"
    inp.write_text("instruction,answer\nsay hi,hi\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no 'response' column.*--response-field"):
        asyncio.run(score_file(echo_reward(), inp, out))


@pytest.mark.parametrize("which", ["final", "working"])
def test_csv_output_or_its_working_file_linked_to_the_input_is_refused(tmp_path, which):
    # a hard link has another path but the same inode: only samefile sees it is the input
    inp = _jsonl(tmp_path / "in.jsonl", ROWS)
    before = inp.read_bytes()
    out = tmp_path / "scores.csv"
    os.link(inp, out if which == "final" else tmp_path / "scores.csv.partial.jsonl")
    with pytest.raises(ConfigError, match="is the input file"):
        asyncio.run(score_file(echo_reward(), inp, out))
    assert inp.read_bytes() == before
