"""Bad input through the Python API, FlipReward.score (the corpus and the checks: corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bad_input.corpus import VALUE_CASES, Case, check_bad_value, check_rest_of_batch, judge_reward
from fliprm.errors import InputError

ENTRY = "api_sync"


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_bad_value(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    check_bad_value(ENTRY, case, request, tmp_path)


def test_rest_of_batch_completes_and_nothing_is_lost(request: pytest.FixtureRequest) -> None:
    check_rest_of_batch(ENTRY, request)


def test_python_api_refuses_a_bare_string_for_a_batch() -> None:
    # a str is a Sequence: it used to be scored one character per item
    with judge_reward() as rm:
        with pytest.raises(InputError, match="instructions must be a list"):
            rm.score("abc", ["x", "y", "z"])
        with pytest.raises(InputError, match="responses must be a list"):
            rm.score(["a"], "b")
