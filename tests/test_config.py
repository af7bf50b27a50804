"""fliprm.config: RewardConfig and RuntimeOptions validate once with field names (one-line
ConfigError, a ValueError), the presets, and the fingerprint (every reward field, the model
file's hash, no runtime field)."""

from __future__ import annotations

import re

import pytest

from fliprm import FlipReward, RewardConfig
from fliprm.config import PRESETS, RuntimeOptions
from fliprm.errors import ConfigError


def test_config_validates_once_with_field_names():
    with pytest.raises(ConfigError, match="max_response_chars: must be >= 1"):
        RewardConfig.preset(max_response_chars=0)
    with pytest.raises(ConfigError, match="unknown FlipReward option 'max_tokes'"):
        FlipReward("fake", max_tokes=3)


def test_fingerprint_covers_every_reward_field_and_no_runtime_field():
    base = RewardConfig(backend="openai:m")
    changes = {"model": "x", "method": "likelihood", "template": "flip", "max_tokens": 7,
               "temperature": 0.5, "seed": 3, "top_p": 0.9, "constrained": False,
               "max_response_chars": 100, "parse_failure": "error", "mask_echo": False,
               "infer": "system", "extra_body": {"a": 1}, "schema_mode": "off",
               "likelihood_mode": "forced", "n_ctx": 1024, "contextual_template": "flip-contextual",
               "explain": True}
    untested = set(RewardConfig.model_fields) - set(changes) - {"backend", "samples", "exact",
                                                                  "similarity"}
    assert not untested, f"add a fingerprint case for {untested}"
    fps = {base.fingerprint()}
    for k, v in changes.items():
        fps.add(base.updated(**{k: v}).fingerprint())
    fps.add(RewardConfig(backend="embedded", exact=True).fingerprint())
    fps.add(RewardConfig(method="f1", temperature=0.7, samples=3).fingerprint())
    assert len(fps) == len(changes) + 3
    # runtime options never change a fingerprint: they live in another object
    assert not set(RuntimeOptions.model_fields) & set(base.identity())


def test_presets_are_defined_once_and_valid():
    for name in PRESETS:
        RewardConfig.preset(name)
    assert RewardConfig.preset("rl").parse_failure == "error"
    assert RewardConfig.preset("paper").template == "flip"


@pytest.mark.parametrize("cls,kwargs,message", [
    (RewardConfig, {"max_response_chars": 0}, "max_response_chars: must be >= 1"),
    (RewardConfig, {"nope": 1}, "nope: "),
    (RewardConfig, {"samples": 3, "method": "f1"}, "samples > 1 needs temperature > 0"),
    (RewardConfig, {"samples": 3}, "samples > 1 applies to method='f1'"),
    (RuntimeOptions, {"max_retries": -1}, "max_retries: must be >= 0"),
])
def test_config_constructors_raise_config_error(cls, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cls(**kwargs)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        RewardConfig(max_tokens=0)


def test_the_config_fingerprint_sees_the_model_files_hash(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF a")
    b.write_bytes(b"GGUF b")
    ra = FlipReward(f"gguf:{a}")
    rb = FlipReward(f"gguf:{b}")
    assert ra.fingerprint() != rb.fingerprint()
    assert RewardConfig(backend=f"gguf:{a}").fingerprint() != ra.fingerprint()  # the hash is in
