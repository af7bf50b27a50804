"""Fixtures for the adapter tests: a FlipReward over a scripted FakeBackend, installed as the
process scorer for the duration of one test."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from fliprm import FlipReward
from fliprm._types import GenerateRequest
from fliprm.backends.fake import FakeBackend
from fliprm.errors import BadResponse
from fliprm.integrations import set_reward


def judge_reply(req: GenerateRequest) -> str | BadResponse:
    """Infers 'Name the capital of France.' for anything about Paris, fails on 'FAIL',
    otherwise echoes the response's first words as the instruction."""
    text = req.messages[-1]["content"]
    if "FAIL" in text:
        return BadResponse("judge exploded")
    if "Paris" in text:
        inferred = "Name the capital of France."
    else:
        inferred = "Write about something else entirely."
    return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": inferred})


@pytest.fixture
def fake_reward() -> Iterator[Callable[..., FlipReward]]:
    made: list[FlipReward] = []

    def install(
        reply: Callable[[GenerateRequest], object] = judge_reply, **kw: object
    ) -> FlipReward:
        # the scripted judge answers FLIP JSON: the F1 method, named so no default decides it
        kw = {"method": "f1", **kw}
        rm = FlipReward(FakeBackend(reply), parse_failure="error", max_retries=0, **kw)  # type: ignore[arg-type]
        set_reward(rm)
        made.append(rm)
        return rm

    yield install
    set_reward(None)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A ChatML byte-level BPE tokenizer built in-process (tests/helpers_rl.py)."""
    pytest.importorskip("transformers")
    from helpers_rl import tiny_chat_tokenizer

    return tiny_chat_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    """:func:`tiny_tokenizer` saved like a checkpoint, for libraries that load a path."""
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path

