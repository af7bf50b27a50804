"""Bad input through fliprm rerank (corpus, shared tests: corpus.py)."""

from __future__ import annotations

from pathlib import Path

from bad_input.corpus import (  # noqa: F401  (shared tests, collected here for ENTRY)
    GOOD,
    _bon_row,
    _write_rows,
    invoke,
    test_bad_line_in_benchmark_or_rerank_file_stops_before_any_work,
    test_bad_value,
    test_judged_run_to_a_path_that_cannot_be_created_is_a_clear_error,
    test_rest_of_batch_completes_and_nothing_is_lost,
)

ENTRY = "rerank"


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
