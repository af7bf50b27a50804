"""Issue 21, "nothing silent at the boundaries": resume, lock and identity cases where data was
mixed, lost or a traceback came out. FakeBackend only; every test names its method."""

from __future__ import annotations

import asyncio
import csv
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend
from fliprm.batch import score_file
from fliprm.cache import ResponseCache
from fliprm.records import OutputError, manifest_path
from helpers_fliprm import score_app, shown_response


def echo_backend() -> FakeBackend:
    # FLIP JSON whose inferred instruction is the response's first line: f1 reward 1.0 on a match
    def reply(req):
        resp = shown_response(req).split("\n")[0]
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": resp})

    return FakeBackend(reply)


def f1_reward(fb: FakeBackend | None = None) -> FlipReward:
    # the echo guard would mask a response equal to its instruction: off, named
    return FlipReward(fb or echo_backend(), method="f1", mask_echo=False)


def row(i: int) -> dict:
    return {"id": f"r{i}", "instruction": f"say {i}", "response": f"say {i}"}


def score(inp: Path, out: Path, fb: FakeBackend | None = None, **kw):
    return asyncio.run(score_file(f1_reward(fb), inp, out, **kw))


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- the output lock follows the file, not its name ---------------------------------------------


def test_two_runs_through_a_hard_link_write_each_line_once(tmp_path):
    inp, out, link = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "link.jsonl"
    inp.write_text("".join(json.dumps(row(i)) + "\n" for i in range(1, 11)))
    out.write_text("")
    os.link(out, link)

    async def both():
        first = asyncio.create_task(score_file(f1_reward(FakeBackend(
            echo_backend()._fn, delay_s=0.01)), inp, out, chunk_size=2))
        await asyncio.sleep(0)  # the first writer holds the lock before the second starts
        with pytest.raises(OutputError, match="locked"):
            await score_file(f1_reward(), inp, link)
        return await first

    s = asyncio.run(both())
    assert s.scored == 10
    assert sorted(r["line"] for r in read_out(out)) == list(range(1, 11))


# ---- an input whose last line had no newline, then grew -------------------------------------------


def _jsonl_unterminated(path: Path, rows: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows))  # no newline after the last row


def test_jsonl_rows_appended_to_an_unterminated_last_line_rescore_that_line(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _jsonl_unterminated(inp, [row(1), row(2), row(3)])
    assert score(inp, out).scored == 3
    with open(inp, "a") as f:  # `cat more.jsonl >> in.jsonl`: row 4 joins line 3
        f.write(json.dumps(row(4)) + "\n" + json.dumps(row(5)) + "\n")
    fb = echo_backend()
    s = score(inp, out, fb)
    recs = {r["line"]: r for r in read_out(out)}
    assert len(read_out(out)) == len(recs) == 4  # one record per input line
    # line 3 is now `{..row 3..}{..row 4..}`: its old reward is gone, it is reported as broken
    assert recs[3]["reward"] is None and "line 3: broken JSON" in recs[3]["error"]
    assert recs[4]["id"] == "r5" and recs[4]["reward"] == 1.0
    assert (s.skipped, s.scored, len(fb.calls)) == (2, 2, 1)


def test_jsonl_append_starting_with_a_newline_keeps_the_last_line(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _jsonl_unterminated(inp, [row(1), row(2)])
    score(inp, out)
    with open(inp, "a") as f:
        f.write("\n" + json.dumps(row(3)) + "\n")  # line 2 is unchanged: nothing to redo
    fb = echo_backend()
    s = score(inp, out, fb)
    assert (s.skipped, s.scored, len(fb.calls)) == (2, 1, 1)
    assert sorted(r["line"] for r in read_out(out)) == [1, 2, 3]


def test_csv_rows_appended_to_an_unterminated_last_row_rescore_that_row(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    inp.write_text("id,instruction,response\na,say a,say a\nb,say b,say b")
    score(inp, out)
    assert [r["reward"] for r in sorted(read_out(out), key=lambda r: r["line"])] == [1.0, 1.0]
    with open(inp, "a") as f:
        f.write("c,say c,say c\nd,say d,say d\n")  # row b becomes "b,say b,say bc,say c,say c"
    fb = echo_backend()
    s = score(inp, out, fb)
    recs = {r["line"]: r for r in read_out(out)}
    assert len(read_out(out)) == len(recs) == 3
    assert recs[3]["reward"] is None and "line 3: more cells than header" in recs[3]["error"]
    assert recs[4]["id"] == "d" and recs[4]["reward"] == 1.0
    assert (s.skipped, s.scored, len(fb.calls)) == (1, 2, 1)


# ---- one deeply nested input line ---------------------------------------------------------------------

DEEP = b'{"id": "deep", "instruction": ' + b"[" * 200_000 + b"]" * 200_000 + b', "response": "x"}'


def test_a_deeply_nested_input_line_is_that_lines_error_record(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(json.dumps(row(1)).encode() + b"\n" + DEEP + b"\n" + json.dumps(row(3)).encode() + b"\n")
    s = score(inp, out)
    recs = {r["line"]: r for r in read_out(out)}
    assert sorted(recs) == [1, 2, 3] and s.scored == 3 and s.errors == 1
    assert recs[2]["error"] == "line 2: JSON nested too deeply" and recs[2]["reward"] is None
    assert recs[1]["reward"] == recs[3]["reward"] == 1.0


def test_a_deeply_nested_line_in_a_ray_shard_is_an_error_row(tmp_path):
    pytest.importorskip("pyarrow")
    from fliprm.batch import Fields
    from fliprm.scale import plan_shards
    from fliprm.scale._shards import read_shard

    inp = tmp_path / "in.jsonl"
    inp.write_bytes(json.dumps(row(1)).encode() + b"\n" + DEEP + b"\n")
    plan = plan_shards(inp, shard_size=10)
    rows = read_shard(plan, plan.shards[0], Fields())
    assert [r["error"] for r in rows] == [None, "line 2: JSON nested too deeply"]


# ---- a cache folder that cannot be created ------------------------------------------------------------


def test_a_cache_that_cannot_be_created_is_a_miss_not_a_failed_item(tmp_path, caplog):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    cache = ResponseCache(blocker / "responses.sqlite")
    assert cache.get("k") is None  # no FileExistsError
    fb = echo_backend()
    rm = FlipReward(fb, method="f1", mask_echo=False, cache=cache)
    res = rm.score(["say hi", "say hi"], ["say hi", "say hi"])
    assert [r.reward for r in res] == [1.0, 1.0] and [r.error for r in res] == [None, None]
    warnings = [r for r in caplog.records if "cache" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def _invoke(args: list, env: dict | None = None):
    return CliRunner().invoke(score_app(), ["score", *map(str, args)], env=env)


def test_cli_default_cache_in_an_uncreatable_folder_scores_without_a_cache(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(row(i)) + "\n" for i in range(1, 4)))
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    res = _invoke([inp, "-o", out, "-b", "fake", "--method", "f1"],
                  env={"FLIPRM_CACHE_DIR": str(blocker)})
    assert res.exit_code == 0, res.output
    assert res.output.count("warning") == 1 and "without a response cache" in res.output
    assert [r["error"] for r in read_out(out)] == [None, None, None]


# ---- a damaged sidecar or input: one line naming the file and the field, exit 2 ----------------------


def _scored_once(tmp_path: Path) -> tuple[Path, Path]:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(row(i)) + "\n" for i in range(1, 3)))
    res = _invoke([inp, "-o", out, "-b", "fake", "--method", "f1", "--no-cache"])
    assert res.exit_code == 0, res.output
    return inp, out


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(input="x"), "input"),
    (lambda m: m.update(settings=[]), "settings"),
    (lambda m: m.pop("input"), "input"),
    (lambda m: m.update(input={"path": "in.jsonl"}), "input.sha256"),
    (lambda m: m["settings"].update(reward=[]), "settings.reward"),
])
def test_a_damaged_sidecar_is_a_one_line_error_naming_the_field(tmp_path, change, field):
    inp, out = _scored_once(tmp_path)
    sidecar = manifest_path(out)
    data = json.loads(sidecar.read_text())
    change(data)
    sidecar.write_text(json.dumps(data))
    before = out.read_text()
    res = _invoke([inp, "-o", out, "-b", "fake", "--method", "f1", "--no-cache"])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # no traceback
    text = "".join(res.output.split())  # rich wraps long lines, even inside a word
    assert sidecar.name in text and f"field'{field}'" in text, res.output
    assert out.read_text() == before  # nothing resumed, nothing written


def test_a_corrupt_parquet_input_is_a_one_line_error(tmp_path):
    pytest.importorskip("pyarrow")
    inp, out = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    inp.write_bytes(b"PAR1 this is not a parquet file PAR1")
    res = _invoke([inp, "-o", out, "-b", "fake", "--method", "f1", "--no-cache"])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # no traceback
    text = "".join(res.output.split())
    assert "in.parquet:notareadableparquetfile" in text, res.output
    assert not out.exists() or out.stat().st_size == 0


def test_a_csv_with_a_newline_free_header_only_is_not_an_append(tmp_path):
    # a header-only CSV without a newline, then rows: the header line is not a record to redo
    inp, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    inp.write_text("id,instruction,response")
    score(inp, out)
    with open(inp, "a") as f:
        csv.writer(f).writerow([])
        f.write("a,say a,say a\n")
    s = score(inp, out)
    assert s.scored == 1 and [r["reward"] for r in read_out(out)] == [1.0]
