"""fliprm.records: the ResultWriter keeps one output per run (a lock that follows the file,
through links too), resumes by cutting only a killed run's half-written last line, in place,
keeps a complete last record without its newline, and never cuts or mixes a file that is not
its own."""

from __future__ import annotations

import json
import os

import pytest

from fliprm.records import OutputError, ResultWriter


def test_a_second_writer_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    with ResultWriter(out, key_field="line"), \
            pytest.raises(OutputError, match="being written by another fliprm run"):
        ResultWriter(out, key_field="line")
    ResultWriter(out, key_field="line").close()  # released when the first one closes


def test_resume_cuts_a_half_written_line_in_place_without_a_temporary_copy(tmp_path):
    # Regression: resume rewrote the whole output (as much free space again as the file, and
    # an out.jsonl.tmp left behind on a full disk).
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 1, "reward": 1.0}\n{"line": 2, "rew')
    ino = out.stat().st_ino
    w = ResultWriter(out, key_field="line")
    w.close()
    assert out.read_text() == '{"line": 1, "reward": 1.0}\n' and out.stat().st_ino == ino
    assert not list(tmp_path.glob("*.tmp"))


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 1, "reward": 1.0}')
    with ResultWriter(out, key_field="line") as w:
        assert w.done == {"1"}
        w.write({"line": 2, "reward": 0.5})
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_second_writer_through_a_link_to_the_same_output_is_refused(tmp_path, link):
    out = tmp_path / "out.jsonl"
    out.write_text("")
    other = tmp_path / "other.jsonl"
    (os.symlink if link == "symlink" else os.link)(out, other)
    manifest = {"settings": {"reward": {"method": "f1"}}}
    with ResultWriter(out, manifest=manifest), \
            pytest.raises(OutputError, match="being written by another fliprm run"):
        ResultWriter(other, manifest=manifest)
    # released with the first writer: the same link now opens
    ResultWriter(other, manifest=manifest).close()


@pytest.mark.parametrize("fragment", ['{"li', "{", '{"', '{"line": 2, "id": "x", "rew'])
def test_a_trailing_fragment_in_the_output_is_cut_off(tmp_path, fragment):
    out = tmp_path / "out.jsonl"
    good = '{"line": 1, "id": null, "reward": 1.0, "error": null}\n'
    out.write_text(good + fragment)
    with ResultWriter(out) as w:
        assert w.done == {"1"}
    assert out.read_text() == good


def test_a_bad_line_in_the_middle_of_the_output_is_still_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    text = '{"line": 1, "reward": 1.0}\n{"li\n{"line": 3, "reward": 1.0}\n'
    out.write_text(text)
    with pytest.raises(OutputError, match="line 2 is not a fliprm record"):
        ResultWriter(out)
    assert out.read_text() == text


def test_half_written_last_line_from_a_killed_run_is_redone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 1, "reward": 1.0}\n{"line": 2, "rew')
    w = ResultWriter(out)
    assert w.done == {"1"}
    w.close()
    assert out.read_text() == '{"line": 1, "reward": 1.0}\n'


def test_a_foreign_last_line_is_never_cut(tmp_path):
    # Regression: -o pointing at a text file without a trailing newline deleted its line.
    out = tmp_path / "notes.txt"
    out.write_text("my notes, no newline")
    with pytest.raises(OutputError, match="not a fliprm record"):
        ResultWriter(out)
    assert out.read_text() == "my notes, no newline"
