"""Bad input through fliprm score on a CSV file (the corpus and the checks: corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bad_input.corpus import (
    FILE_CASES,
    VALUE_CASES,
    Case,
    FileCase,
    check_bad_line_in_file,
    check_bad_value,
    check_bom_before_the_first_line,
    check_rerun_after_bad_input,
    check_rest_of_batch,
)

ENTRY = "cli_score_csv"


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_bad_value(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    check_bad_value(ENTRY, case, request, tmp_path)


def test_rest_of_batch_completes_and_nothing_is_lost(request: pytest.FixtureRequest) -> None:
    check_rest_of_batch(ENTRY, request)


@pytest.mark.parametrize("fc", FILE_CASES, ids=lambda fc: fc.id)
def test_bad_line_in_file(fc: FileCase, request: pytest.FixtureRequest) -> None:
    check_bad_line_in_file(ENTRY, fc, request)


def test_bom_before_the_first_line_is_ignored(request: pytest.FixtureRequest) -> None:
    check_bom_before_the_first_line(ENTRY, request)


def test_rerun_after_bad_input_redoes_and_duplicates_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    check_rerun_after_bad_input(ENTRY, request, tmp_path)
