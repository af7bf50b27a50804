"""Bad input through the open-instruct verifier (corpus, shared tests: corpus.py)."""

from __future__ import annotations

from bad_input.corpus import (  # noqa: F401  (shared tests, collected here for ENTRY)
    test_bad_value,
    test_rest_of_batch_completes_and_nothing_is_lost,
)

ENTRY = "open_instruct"
