"""Bad input through fliprm score on a JSONL file (corpus, shared tests: corpus.py)."""

from __future__ import annotations

from bad_input.corpus import (  # noqa: F401  (shared tests, collected here for ENTRY)
    test_bad_line_in_file,
    test_bad_value,
    test_bom_before_the_first_line_is_ignored,
    test_rerun_after_bad_input_redoes_and_duplicates_nothing,
    test_rest_of_batch_completes_and_nothing_is_lost,
)

ENTRY = "cli_score_jsonl"
