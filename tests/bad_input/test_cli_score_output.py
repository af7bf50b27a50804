"""Bad input through fliprm score: the output location failing (helpers: corpus.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bad_input.corpus import _assert_clear_output_error, _blocked, _one_pair, invoke


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_score_to_a_full_disk_is_a_clear_error(tmp_path: Path, scripted_cli: None) -> None:
    # every write to /dev/full fails with ENOSPC, like a full disk
    code, output = invoke(
        ["score", _one_pair(tmp_path), "-o", "/dev/full", "-b", "fake", "--no-cache"]
    )
    _assert_clear_output_error(code, output, "/dev/full", "No space left on device")


def test_score_to_a_path_that_cannot_be_created_is_a_clear_error(
    tmp_path: Path, scripted_cli: None
) -> None:
    out = _blocked(tmp_path) / "scores.jsonl"
    code, output = invoke(["score", _one_pair(tmp_path), "-o", out, "-b", "fake", "--no-cache"])
    _assert_clear_output_error(code, output, out, "cannot write results to")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores read-only modes")
def test_score_into_a_read_only_folder_is_a_clear_error(tmp_path: Path, scripted_cli: None) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, output = invoke(
            ["score", _one_pair(tmp_path), "-o", ro / "s.jsonl", "-b", "fake", "--no-cache"]
        )
    finally:
        ro.chmod(0o700)
    _assert_clear_output_error(code, output, ro / "s.jsonl", "Permission denied")


def test_existing_output_with_a_broken_middle_line_is_a_clear_error(
    tmp_path: Path, scripted_cli: None
) -> None:
    # only a half-written *last* line is a killed run's; one in the middle is someone's edit
    out = tmp_path / "scores.jsonl"
    pair = _one_pair(tmp_path)
    code, output = invoke(["score", pair, "-o", out, "-b", "fake", "--no-cache"])
    assert code == 0, output
    out.write_text('{"line": 1}\nnot json\n{"line": 3}\n')
    code, output = invoke(["score", pair, "-o", out, "-b", "fake", "--no-cache"])
    _assert_clear_output_error(code, output, out, "line 2 is not a fliprm record")
    assert out.read_text() == '{"line": 1}\nnot json\n{"line": 3}\n'  # left untouched


def test_existing_output_without_settings_is_refused_and_untouched(
    tmp_path: Path, scripted_cli: None
) -> None:
    # a file fliprm did not write (or an older fliprm, which recorded no settings)
    out = tmp_path / "scores.jsonl"
    out.write_text("my notes, one line without a newline")
    code, output = invoke(["score", _one_pair(tmp_path), "-o", out, "-b", "fake", "--no-cache"])
    _assert_clear_output_error(code, output, out, "no record of their settings")
    assert out.read_text() == "my notes, one line without a newline"
