"""Bad input through fliprm rerank (the corpus and the checks: corpus.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bad_input.corpus import (
    GOOD,
    JUDGED_FILE_CASES,
    VALUE_CASES,
    Case,
    _bon_row,
    _write_rows,
    check_bad_line_in_judged_file,
    check_bad_value,
    check_judged_run_to_a_blocked_path,
    check_rest_of_batch,
    invoke,
)

ENTRY = "rerank"


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_bad_value(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    check_bad_value(ENTRY, case, request, tmp_path)


def test_rest_of_batch_completes_and_nothing_is_lost(request: pytest.FixtureRequest) -> None:
    check_rest_of_batch(ENTRY, request)


@pytest.mark.parametrize("bad", JUDGED_FILE_CASES, ids=lambda b: b[0])
def test_bad_line_in_benchmark_or_rerank_file_stops_before_any_work(
    bad: tuple[str, Callable[[dict[str, Any]], bytes], str], tmp_path: Path, scripted_cli: None
) -> None:
    check_bad_line_in_judged_file(ENTRY, bad, tmp_path, scripted_cli)


def test_judged_run_to_a_path_that_cannot_be_created_is_a_clear_error(
    tmp_path: Path, scripted_cli: None
) -> None:
    check_judged_run_to_a_blocked_path(ENTRY, tmp_path, scripted_cli)


def test_rerank_labels_that_are_not_numbers_are_refused_up_front(
    tmp_path: Path, scripted_cli: None
) -> None:
    # the report averages labels: a null used to crash it after every row had been judged
    data = _write_rows(
        tmp_path / "bon.jsonl",
        [
            {**_bon_row("a", GOOD, GOOD), "pref": [1.0, 0.5, 0.2]},
            {**_bon_row("b", GOOD, GOOD), "pref": [1.0, None, 0.2]},
        ],
    )
    code, output = invoke(
        [
            "rerank",
            data,
            "--methods",
            "flip",
            "--backend",
            "fake",
            "--label-field",
            "pref",
            "--out",
            tmp_path / "out",
        ]
    )
    assert code == 2 and "row 2" in output and "'pref' must be a list of numbers" in output, output
