"""OpenRLHF file mode: reward_func(queries, prompts, labels) -> rewards/scores/extra_logs."""

from __future__ import annotations

import pytest

from fliprm.integrations.openrlhf import extract_response, reward_func

INSTR = "Name the capital of France."
PROMPT = "<|im_start|>user\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("query", "prompt", "expected"),
    [
        (PROMPT + "Paris.<|im_end|><|endoftext|>", PROMPT, "Paris."),
        ("<s>[INST] hi [/INST] Hello there</s>", "<s>[INST] hi [/INST]", "Hello there"),
        ("<|begin_of_text|>P: Hey<|eot_id|><|end_of_text|>", "<|begin_of_text|>P:", "Hey"),
        ("<pad><pad>" + PROMPT + "Yes<|im_end|>", PROMPT, "Yes"),  # left padding
        (PROMPT + "No end marker", PROMPT, "No end marker"),
        (PROMPT + "<|im_end|>", PROMPT, ""),
    ],
)
def test_extract_response(query, prompt, expected):
    assert extract_response(query, prompt) == expected


def test_reward_func_returns_tensors_when_torch_is_present(fake_reward):
    torch = pytest.importorskip("torch")
    fake_reward()
    out = reward_func(
        queries=[PROMPT + "Paris.<|im_end|>", PROMPT + "FAIL<|im_end|>", PROMPT + "<|im_end|>"],
        prompts=[PROMPT] * 3,
        labels=[INSTR, INSTR, INSTR],
        method="f1",
    )
    assert set(out) == {"rewards", "scores", "extra_logs", "extra_info"}
    assert isinstance(out["rewards"], torch.Tensor)
    assert out["rewards"].tolist() == [1.0, 0.0, 0.0]
    assert out["scores"].tolist() == [1.0, 0.0, 0.0]
    assert out["extra_logs"]["flip_failed"].tolist() == [0.0, 1.0, 0.0]
    assert out["extra_logs"]["flip_precision"].tolist() == [1.0, 0.0, 0.0]
    assert out["extra_info"]["flip_method"] == ["f1"] * 3
    assert out["extra_info"]["flip_inferred_instruction"] == [INSTR, "", ""]


def test_reward_func_returns_lists_without_torch(fake_reward, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *a, **kw):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *a, **kw)

    fake_reward()
    monkeypatch.setattr(builtins, "__import__", no_torch)
    out = reward_func([PROMPT + "Paris.<|im_end|>"], [PROMPT], [[INSTR]])
    assert out["rewards"] == [1.0] and out["scores"] == [1.0]


def test_empty_batch(fake_reward):
    fake_reward()
    out = reward_func([], [], [])
    assert list(out["rewards"]) == [] and list(out["scores"]) == []


def test_file_loads_by_path_like_openrlhf(fake_reward):
    """OpenRLHF imports --reward.remote_url *.py as a standalone file."""
    import importlib.util

    import fliprm.integrations.openrlhf as mod

    spec = importlib.util.spec_from_file_location("reward_func_module", mod.__file__)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    fake_reward()
    out = loaded.reward_func([PROMPT + "Paris.<|im_end|>"], [PROMPT], [INSTR])
    assert list(out["rewards"]) == [1.0]


def test_unknown_keyword_is_an_error(fake_reward):
    from fliprm.errors import ConfigError

    fake_reward()
    with pytest.raises(ConfigError, match="extra_kw"):
        reward_func([PROMPT + "Paris.<|im_end|>"], [PROMPT], [INSTR], extra_kw="ignored")
