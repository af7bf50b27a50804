"""Bad input through the Python API, FlipReward.score (corpus, shared tests: corpus.py)."""

from __future__ import annotations

import pytest

from bad_input.corpus import (  # noqa: F401  (shared tests, collected here for ENTRY)
    judge_reward,
    test_bad_value,
    test_rest_of_batch_completes_and_nothing_is_lost,
)
from fliprm.errors import InputError

ENTRY = "api_sync"


def test_python_api_refuses_a_bare_string_for_a_batch() -> None:
    # a str is a Sequence: it used to be scored one character per item
    with judge_reward() as rm:
        with pytest.raises(InputError, match="instructions must be a list"):
            rm.score("abc", ["x", "y", "z"])
        with pytest.raises(InputError, match="responses must be a list"):
            rm.score(["a"], "b")
