"""Bad input through the server's POST /get_reward (OpenRLHF's wire format) (the corpus and the checks: corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bad_input.corpus import VALUE_CASES, Case, check_bad_value, check_rest_of_batch

ENTRY = "server_get_reward"


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_bad_value(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    check_bad_value(ENTRY, case, request, tmp_path)


def test_rest_of_batch_completes_and_nothing_is_lost(request: pytest.FixtureRequest) -> None:
    check_rest_of_batch(ENTRY, request)
