"""score_file (the path behind `fliprm score FILE`): bad lines, resume, ids, formats."""

import asyncio
import csv
import json
import os

import pytest

from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend
from fliprm.batch import Fields, score_file
from fliprm.errors import ConfigError
from fliprm.records import OutputError
from helpers_fliprm import shown_response


def echo_backend():
    # Infers the response's first line as the instruction: reward 1.0 when they match. Its
    # rewards are the F1 method's, without the echo guard (which would mask a response equal
    # to its instruction): the tests name both.
    def reply(req):
        resp = shown_response(req).split("\n")[0]
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": resp})

    return FakeBackend(reply)


def write_jsonl(path, lines):
    with open(path, "wb") as f:
        f.writelines((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def read_out(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


BAD_AND_GOOD = [
    {"id": "a", "instruction": "say hi", "response": "say hi"},
    b'{"id": "broken", "instruction": ',
    {"id": "b", "instruction": "say bye"},
    {"id": "c", "instruction": 7, "response": "x"},
    {"id": "d", "instruction": "x", "response": "   "},
    b'\xff\xfe{"id": "utf"}',
    {"id": "e", "instruction": "say yes", "response": "say yes\x00"},
    [1, 2],
    {"id": "a", "instruction": "dup", "response": "dup"},
    {"instruction": "no id", "response": "no id"},
]


def test_bad_lines_become_error_records_naming_line_and_field(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, BAD_AND_GOOD)
    s = asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out))
    recs = {r["line"]: r for r in read_out(out)}
    assert len(read_out(out)) == len(BAD_AND_GOOD) == s.total == len(recs)
    assert recs[1]["reward"] == 1.0 and recs[7]["reward"] == 1.0 and recs[10]["reward"] == 1.0
    assert recs[1]["id"] == "a" and recs[10]["id"] is None  # no id field: null, never invented
    assert "line 2: broken JSON" in recs[2]["error"] and recs[2]["id"] is None
    assert "line 3" in recs[3]["error"] and "'response' is missing" in recs[3]["error"]
    assert "line 4" in recs[4]["error"] and "'instruction' must be a string" in recs[4]["error"]
    assert "line 5" in recs[5]["error"] and "'response' is empty" in recs[5]["error"]
    assert "line 6: invalid UTF-8" in recs[6]["error"]
    assert "line 8: expected a JSON object" in recs[8]["error"]
    assert "duplicate id 'a'" in recs[9]["error"] and "first on line 1" in recs[9]["error"]
    assert s.errors == 7 and s.scored == 10 and s.mean_reward == 1.0


def test_an_error_record_cannot_collide_with_a_user_id(tmp_path):
    # Regression: error records were keyed "line-N", so a user id "line-2" was skipped as done.
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": "x", "instruction": "a"}, b"{broken",
                      {"id": "line-2", "instruction": "ok", "response": "ok"}])
    asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out))
    s = asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out))
    recs = {r["line"]: r for r in read_out(out)}
    assert recs[3]["id"] == "line-2" and recs[3]["reward"] == 1.0
    assert s.skipped == 3 and len(read_out(out)) == 3


def test_rerun_skips_finished_ids_and_retry_errors_redoes_failures(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": str(i), "instruction": "x", "response": f"r{i}"} for i in range(5)])
    fb = echo_backend()
    asyncio.run(score_file(FlipReward(fb, method="f1", mask_echo=False), inp, out, limit=3))
    assert len(fb.calls) == 3
    s = asyncio.run(score_file(FlipReward(fb, method="f1", mask_echo=False), inp, out))
    assert len(fb.calls) == 5 and s.skipped == 3 and s.scored == 2
    assert sorted(r["id"] for r in read_out(out)) == ["0", "1", "2", "3", "4"]

    # an item that failed is kept as failed on a plain rerun (and counted), redone with
    # retry_errors; the field mapping is part of the recorded settings, so fixing a wrong
    # --instruction-field is a settings change that a plain rerun may not mix in
    inp2, out2 = tmp_path / "in2.jsonl", tmp_path / "out2.jsonl"
    # (a column that no row has is one usage error up front: see test_outputs.py)
    write_jsonl(inp2, [{"id": "z", "prompt": "x", "instruction": 7, "response": "x"},
                       {"id": "y", "prompt": "y", "instruction": None, "response": "y"}])
    s = asyncio.run(score_file(FlipReward(fb, method="f1", mask_echo=False), inp2, out2))
    assert s.errors == 2 and all(r["error"] for r in read_out(out2))
    s = asyncio.run(score_file(FlipReward(fb, method="f1", mask_echo=False), inp2, out2))
    assert s.scored == 0 and s.errors == 0 and s.errors_before == 2 and s.errors_total == 2
    fixed = Fields(instruction="prompt")
    with pytest.raises(ConfigError, match=r"other settings \(fields.instruction: .instruction. -> "
                       r".prompt.\).*--force"):
        asyncio.run(score_file(FlipReward(fb, method="f1", mask_echo=False), inp2, out2, fields=fixed, retry_errors=True))
    s = asyncio.run(score_file(FlipReward(fb, method="f1", mask_echo=False), inp2, out2, fields=fixed, force=True))
    assert s.scored == 2 and s.errors_total == 0
    recs = read_out(out2)
    assert len(recs) == 2 and all(r["error"] is None and r["reward"] == 1.0 for r in recs)


def test_retry_errors_keeps_one_record_per_input_line(tmp_path):
    # Regression: --retry-errors dropped the duplicate-id error record (7 lines became 6).
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": str(i), "instruction": "x", "response": "x"} for i in range(5)]
    rows += [{"id": "1", "instruction": "dup", "response": "dup"}, {"id": "9", "instruction": "x"}]
    write_jsonl(inp, rows)
    asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out))
    assert len(read_out(out)) == 7
    s = asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out, retry_errors=True))
    recs = read_out(out)
    assert sorted(r["line"] for r in recs) == list(range(1, 8))
    assert s.errors == 2 and s.errors_before == 0 and s.skipped == 5


def test_csv_and_messages_inputs(tmp_path):
    inp = tmp_path / "in.csv"
    with open(inp, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "prompt", "answer"])
        wr.writerow(["1", "say hi", "say hi"])
    out = tmp_path / "o.jsonl"
    asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out,
                           fields=Fields(instruction="prompt", response="answer")))
    assert read_out(out)[0]["reward"] == 1.0

    inp = tmp_path / "m.jsonl"
    write_jsonl(inp, [{"id": "m", "messages": [{"role": "user", "content": "hello there"},
                                               {"role": "assistant", "content": "hello there"}]}])
    out = tmp_path / "m.out.jsonl"
    asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, out))
    assert read_out(out)[0]["reward"] == 1.0


def test_unwritable_or_full_output_is_a_clear_error(tmp_path):
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, [{"id": "1", "instruction": "x", "response": "y"}])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write results"):
        asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, blocker / "out.jsonl"))
    # /dev/full fails every write with ENOSPC, like a full disk
    with pytest.raises(OutputError, match="No space left"):
        asyncio.run(score_file(FlipReward(echo_backend(), method="f1", mask_echo=False), inp, "/dev/full"))
    # a device has no sidecar manifest (regression: /dev/full.fliprm.json was created)
    assert not os.path.exists("/dev/full.fliprm.json")
