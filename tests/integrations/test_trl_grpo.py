"""Acceptance: a real TRL GRPOTrainer run on CPU with FLIP rewards from the embedded model.

A tiny randomly initialised Qwen2 (2 layers, hidden 64) with the judge's own tokenizer (read
from the embedded GGUF) is trained for 2 optimizer steps, once with the adapter scoring
in-process (the module-level ``flip_reward``, configured by env vars exactly as
``trl grpo --reward_funcs fliprm.integrations.trl.flip_reward`` would be) and once through a
fliprm server (``get_flip_reward(server_url=...)``).
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

pytestmark = [pytest.mark.model, pytest.mark.slow]

PROMPTS = [
    "Name the capital of France.",
    "Write a haiku about rain.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A random 2-layer Qwen2 with the judge's tokenizer, saved to disk like a real checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from fliprm.model import default_model_path

    try:
        gguf = default_model_path()
    except Exception as exc:  # noqa: BLE001 - model not installed
        pytest.skip(f"embedded model not installed: {exc}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-qwen2")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _train(model_path: str, reward_func, out_dir) -> list[dict]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(out_dir),
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=16,
        learning_rate=1e-4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=[reward_func],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    trainer.train()
    assert trainer.state.global_step == 2
    return [h for h in trainer.state.log_history if "rewards/flip_reward/mean" in h]


def _assert_judged_rewards(logs: list[dict]) -> None:
    assert len(logs) >= 2, logs
    for h in logs:
        mean = h["rewards/flip_reward/mean"]
        assert math.isfinite(mean) and 0.0 <= mean <= 1.0, h


def test_grpo_in_process_adapter(tiny_policy, embedded_backend, monkeypatch, tmp_path):
    from fliprm.integrations import get_scorer, set_reward
    from fliprm.integrations._common import FlipSettings
    from fliprm.integrations.trl import flip_reward

    # The env-var configuration `trl grpo --reward_funcs fliprm.integrations.trl.flip_reward`
    # uses; the judge is the session's model, reached through its local HTTP endpoint so the
    # test does not load a second copy.
    set_reward(None)
    for k, v in {
        "FLIPRM_BACKEND": "openai",
        "FLIPRM_BASE_URL": embedded_backend.http_url,
        "FLIPRM_BACKEND_API_KEY": embedded_backend.api_key,
        "FLIPRM_TEMPLATE": "flip-short",
        "FLIPRM_MAX_TOKENS": "64",
        "FLIPRM_PARSE_FAILURE": "zero",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("FLIPRM_SERVER_URL", raising=False)
    logs = _train(tiny_policy, flip_reward, tmp_path)
    _assert_judged_rewards(logs)
    scorer = get_scorer(FlipSettings.from_env())
    assert scorer.engine.stats.calls > 0  # type: ignore[attr-defined]


def test_grpo_through_fliprm_server(tiny_policy, embedded_backend, tmp_path):
    import httpx

    from fliprm import FlipReward
    from fliprm.integrations.trl import get_flip_reward
    from fliprm.server import ServerThread, create_app

    rm = FlipReward(embedded_backend, template="flip-short", max_tokens=64, parse_failure="zero",
                    method="f1")
    with ServerThread(create_app(rm)) as srv:
        # the client names the method it trains on; the server must serve the same
        reward = get_flip_reward(server_url=srv.url, method="f1")
        logs = _train(tiny_policy, reward, tmp_path)
        items = _metric(httpx.get(srv.url + "/metrics").text, "fliprm_items_total")
    _assert_judged_rewards(logs)
    assert items > 0  # the rewards came from the judge behind the server


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")
