"""examples/grpo_ifeval.py: the recipe's main(argv) trains a tiny random policy with TRL's
GRPOTrainer for 2 steps on the CPU, on the shipped IFEval-style prompts, with a fake judge.

The FLIP reward is scripted for ``method="f1"`` (explicit; tests/helpers_rl.py), and every
reward the adapter returned is recorded, so the rewards TRL logged can be checked exactly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("datasets")
pytest.importorskip("transformers")

import fliprm.integrations.trl as flip_trl
from fliprm.integrations import set_reward
from helpers_rl import f1_reward, save_tiny_policy

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "grpo_ifeval.py"
TWO_STEPS = ["--max-steps", "2", "--num-generations", "2", "--batch-size", "2",
             "--max-completion-length", "8", "--learning-rate", "1e-4"]


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("grpo_ifeval", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> str:
    return str(save_tiny_policy(tmp_path_factory.mktemp("tiny-policy")))


@pytest.fixture(autouse=True)
def _no_override():
    set_reward(None)
    yield
    set_reward(None)


def test_shipped_prompts_are_ifeval_rows(recipe):
    rows = recipe.load_rows(recipe.DATA)
    assert len(rows) == 8
    for row in rows:
        assert len(row["instruction_id_list"]) == len(row["kwargs"]) >= 1


def test_flip_reward_settings_from_flags(recipe):
    local = recipe.build_reward(recipe.parse_args(
        ["--model", "m", "--judge-backend", "fake", "--method", "f1"]))
    assert local.__name__ == "flip_reward"
    assert (local.settings.config.backend, local.settings.config.method) == ("fake", "f1")
    assert not local.settings.adapter.server_url
    served = recipe.build_reward(recipe.parse_args(
        ["--model", "m", "--judge-url", "http://127.0.0.1:8080"]))
    assert served.settings.adapter.server_url == "http://127.0.0.1:8080"
    assert served.settings.config == flip_trl.get_flip_reward().settings.config  # the RL default
    with pytest.raises(SystemExit, match="--judge-url serves FLIP only"):
        recipe.build_reward(recipe.parse_args(
            ["--model", "m", "--reward", "pointwise", "--judge-url", "http://x"]))


def test_grpo_two_steps_with_flip_reward(recipe, tiny_policy, tmp_path, monkeypatch):
    set_reward(f1_reward())
    returned: list[list[float]] = []
    real = flip_trl.score_batch

    async def recording(*args, **kwargs):
        results = await real(*args, **kwargs)
        returned.append([r.reward for r in results])
        return results

    monkeypatch.setattr(flip_trl, "score_batch", recording)
    summary = recipe.main(["--model", tiny_policy, "--output-dir", str(tmp_path), *TWO_STEPS])

    assert summary["steps"] == 2 and summary["reward_key"] == "rewards/flip_reward/mean"
    assert len(returned) == 2 and all(len(r) == 2 and None not in r for r in returned)
    # what TRL logged is what the adapter returned: the mean of each step's 2 completions
    assert summary["reward_per_step"] == pytest.approx([sum(r) / 2 for r in returned])
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2


def test_grpo_two_steps_with_pointwise_baseline_and_eval(
    recipe, tiny_policy, tmp_path, monkeypatch
):
    """The baseline through the CLI's own backend wiring (``--judge-backend fake``: scripted
    SCORE = 1 + len(prompt) % 10), then --eval through the verifiers' API (a stand-in module
    here, so this test does not depend on fliprm.verifiers)."""
    seen: list[tuple] = []

    def verify(row, response, suite):
        seen.append((row["key"], suite))
        n = len(row["instruction_id_list"])
        return types.SimpleNamespace(prompt_strict=row["key"] % 2 == 0, prompt_loose=True,
                                     inst_strict=[True] * n, inst_loose=[True] * n)

    stub = types.ModuleType("fliprm.verifiers")
    stub.verify = verify
    monkeypatch.setitem(sys.modules, "fliprm.verifiers", stub)
    summary = recipe.main([
        "--model", tiny_policy, "--output-dir", str(tmp_path), "--reward", "pointwise",
        "--judge-backend", "fake", "--eval", "--eval-max-new-tokens", "4", *TWO_STEPS,
    ])
    assert summary["steps"] == 2 and summary["reward_key"] == "rewards/pointwise_reward/mean"
    rewards = summary["reward_per_step"]
    assert len(rewards) == 2 and all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in rewards)
    # scripted scores are whole numbers 1..10, so each mean of 2 is a multiple of 1/18
    assert all(abs(r * 18 - round(r * 18)) < 1e-6 for r in rewards)
    assert [k for k, _ in seen] == list(range(1, 9)) and {s for _, s in seen} == {"ifeval"}
    assert summary["eval"] == {"prompts": 8, "prompt_strict": 0.5, "prompt_loose": 1.0,
                               "inst_strict": 1.0, "inst_loose": 1.0}


def test_eval_without_verifiers_is_one_line_error(recipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "fliprm.verifiers", None)  # import fails
    args = recipe.parse_args(["--model", "m"])
    with pytest.raises(SystemExit, match="--eval needs fliprm.verifiers"):
        recipe.evaluate(object(), [], args)
