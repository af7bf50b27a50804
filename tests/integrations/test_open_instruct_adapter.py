"""open-instruct verifier shape: __call__(tokenized_prediction, prediction, label, query=None)."""

from __future__ import annotations

import sys

import pytest

from fliprm.integrations.open_instruct import (
    FlipVerifier,
    FlipVerifierConfig,
    VerificationResult,
    register_with_open_instruct,
)

INSTR = "Name the capital of France."


def test_module_does_not_import_open_instruct():
    assert "open_instruct" not in sys.modules


def test_sync_call_scores_against_label(fake_reward):
    fake_reward()
    v = FlipVerifier()
    res = v([1, 2, 3], "Paris.", INSTR, query="ignored")
    assert isinstance(res, VerificationResult)
    assert (res.score, res.cost) == (1.0, 0.0) and INSTR in res.reasoning
    assert v.name == "general-flip" and v.weight == 1.0


async def test_async_call_and_list_label(fake_reward):
    fake_reward()
    res = await FlipVerifier().async_call([], "Paris.", [INSTR])
    assert res.score == 1.0


async def test_failure_is_zero_with_reason(fake_reward):
    fake_reward()
    res = await FlipVerifier().async_call([], "FAIL", INSTR, rollout_state=None)
    assert res.score == 0.0 and "flip failed" in res.reasoning


def test_config_from_args_picks_flip_fields_only():
    args = type("Args", (), {"flip_server_url": "http://h:1", "flip_max_tokens": 50, "lr": 1})()
    cfg = FlipVerifier.get_config_class().from_args(args, None)
    assert cfg == FlipVerifierConfig(flip_server_url="http://h:1", flip_max_tokens=50)
    s = cfg.settings()
    assert (s.adapter.server_url, s.config.max_tokens) == ("http://h:1", 50)


def test_register_needs_open_instruct():
    import importlib.util

    if importlib.util.find_spec("open_instruct") is None:
        # skipped only when absent: an installed open-instruct that fails to import must fail
        pytest.skip("open-instruct is not installed: it is not on PyPI (README, open-instruct)")
    cls = register_with_open_instruct()
    assert cls.__name__ == "OpenInstructFlipVerifier"


def test_every_fliprm_setting_is_a_flip_field_of_the_verifier_config():
    # derived from the config objects: a new setting reaches open-instruct with no edit here
    from fliprm.integrations._common import known_settings

    names = {f"flip_{n}" for n in known_settings()}
    assert names == set(FlipVerifierConfig.__dataclass_fields__)
    args = type("Args", (), {"flip_method": "likelihood", "flip_mask_echo": False,
                             "flip_template": "flip", "unrelated": 1})()
    s = FlipVerifierConfig.from_args(args).settings()
    assert (s.config.method, s.config.mask_echo, s.config.template) == ("likelihood", False, "flip")


def test_unknown_keyword_is_an_error_and_rollout_state_is_known(fake_reward):
    fake_reward()
    v = FlipVerifier()
    assert v([], "Paris.", INSTR, rollout_state=object()).score == 1.0
    with pytest.raises(TypeError, match="bogus"):
        v([], "Paris.", INSTR, bogus=1)
