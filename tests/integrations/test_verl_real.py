"""fliprm inside the real verl (0.9.x, requirements/rl-tests.txt): its Reward Loop worker and
legacy batch manager load ``fliprm/integrations/verl.py`` by path from a verl config and score
a real ``DataProto`` built with verl's own classes (tokens from a tiny in-process tokenizer).

The judge is a FakeBackend scripted for ``method="f1"`` (explicit: the library default may
change), so every reward is known exactly: an answer about Paris is inferred as "Name the
capital of France." (F1 1.0 against that instruction; 4/9 against "Write a haiku about rain."),
and an answer containing FAIL makes the judge call fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_rl import FRANCE, f1_reward, require_installed, scripted_judge

require_installed("verl", "pip install --no-deps -r requirements/rl-tests.txt (README, verl)")
pytest.importorskip("fastapi")

import numpy as np
import torch
import verl
from fastapi import FastAPI, Request
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.workers.reward_manager import get_reward_manager_cls

import fliprm.integrations.verl as flip_verl
from fliprm.errors import BadResponse
from fliprm.integrations import set_reward
from fliprm.server import ServerThread, create_app

HAIKU = "Write a haiku about rain."
ROWS = [  # (instruction, response, expected reward)
    (FRANCE, "Paris is the capital.", 1.0),
    (HAIKU, "Soft rain on the roof.", 4 / 9),
    (HAIKU, "FAIL", 0.0),  # the judge call fails: verl gets failure_score (0.0), flagged
]
EXPECTED = [r for _, _, r in ROWS]


@pytest.fixture(autouse=True)
def _no_override():
    set_reward(None)
    yield
    set_reward(None)


@pytest.fixture
def fliprm_server(monkeypatch):
    # the server scores with f1; a client must ask for f1 too, or it refuses (settings differ)
    monkeypatch.setenv("FLIPRM_METHOD", "f1")
    with ServerThread(create_app(f1_reward())) as srv:
        yield srv


def verl_config(tokenizer_dir: Path, fn_name: str, reward_kwargs: dict) -> object:
    """verl's own generated PPO config, pointed at fliprm's adapter file like a user would."""
    cfg = OmegaConf.load(Path(verl.__file__).parent / "trainer/config/_generated_ppo_trainer.yaml")
    cfg.actor_rollout_ref.model.path = str(tokenizer_dir)
    cfg.reward.custom_reward_function.path = flip_verl.__file__
    cfg.reward.custom_reward_function.name = fn_name
    cfg.reward.custom_reward_function.reward_kwargs = reward_kwargs
    return cfg


def rollout_batch(tok, rows=ROWS, prompt_len: int = 24, response_len: int = 12) -> DataProto:
    """A rollout as verl's trainer hands it to the reward: left-padded prompts, right-padded
    responses ending in EOS, the instruction in ``extra_info["question"]``."""
    pad = tok.pad_token_id
    prompts, responses, masks = [], [], []
    for instruction, response, _ in rows:
        p = tok.apply_chat_template(
            [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
        )
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(response + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert len(p_ids) <= prompt_len and len(r_ids) <= response_len
        prompts.append([pad] * (prompt_len - len(p_ids)) + p_ids)
        responses.append(r_ids + [pad] * (response_len - len(r_ids)))
        masks.append([0] * (prompt_len - len(p_ids)) + [1] * (len(p_ids) + len(r_ids))
                     + [0] * (response_len - len(r_ids)))
    prompt_t, response_t = torch.tensor(prompts), torch.tensor(responses)
    n = len(rows)
    return DataProto.from_dict(
        tensors={
            "prompts": prompt_t,
            "responses": response_t,
            "input_ids": torch.cat([prompt_t, response_t], dim=1),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": np.array(["ifeval"] * n, dtype=object),
            "reward_model": np.array(
                [{"style": "model", "ground_truth": ""} for _ in rows], dtype=object
            ),
            "extra_info": np.array([{"question": q} for q, _, _ in rows], dtype=object),
        },
    )


def last_token_rewards(data: DataProto, rm_scores: torch.Tensor) -> list[float]:
    """The reward verl placed on each response's last valid token (and nothing elsewhere)."""
    prompt_len = data.batch["prompts"].size(1)
    lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=1)
    out = []
    for i, n in enumerate(lengths.tolist()):
        row = rm_scores[i].tolist()
        assert all(v == 0.0 for j, v in enumerate(row) if j != n - 1), row
        out.append(row[n - 1])
    return out


def failed_flags(info: dict) -> list[float]:
    # loosely: the adapter's own failure flag, whatever its final name
    return [v for k, v in info.items() if "fail" in k]


async def test_reward_loop_naive_manager_scores_through_fliprm_serve(
    tiny_tokenizer, tiny_tokenizer_dir, fliprm_server
):
    """verl's Reward Loop (the default): worker -> naive manager -> our async compute_score,
    whose ``reward_kwargs`` point it at a real ``fliprm serve``."""
    cfg = verl_config(tiny_tokenizer_dir, "compute_score", {"server_url": fliprm_server.url})
    data = rollout_batch(tiny_tokenizer)
    worker = RewardLoopWorker(cfg)
    assert type(worker.reward_manager).__name__ == "NaiveRewardManager"
    outputs = await worker.compute_score_batch(data)

    scores = [o["reward_score"] for o in outputs]
    assert scores == pytest.approx(EXPECTED)
    infos = [o["reward_extra_info"] for o in outputs]
    assert [i["score"] for i in infos] == pytest.approx(EXPECTED)
    assert [failed_flags(i) for i in infos] == [[0.0], [0.0], [1.0]]
    # verl averages every numeric extra and skips strings (metric_utils.process_validation_metrics)
    assert all(isinstance(v, float) for i in infos for k, v in i.items()
               if k not in ("flip_method", "flip_inferred_instruction"))
    assert {i["flip_method"] for i in infos} == {"f1"}
    # what RewardLoopManager does with the scores: one reward on the last response token
    rm_scores = worker.reward_manager.assemble_rm_scores(data, scores)
    assert last_token_rewards(data, rm_scores) == pytest.approx(EXPECTED)


async def test_reward_loop_limited_manager_in_process(tiny_tokenizer, tiny_tokenizer_dir):
    """The rate-limited Reward Loop manager, scoring in the worker's own process."""
    set_reward(f1_reward())
    cfg = verl_config(tiny_tokenizer_dir, "compute_score", {})
    cfg.reward.reward_manager.name = "rate_limited"
    worker = RewardLoopWorker(cfg)
    assert type(worker.reward_manager).__name__ == "RateLimitedRewardManager"
    outputs = await worker.compute_score_batch(rollout_batch(tiny_tokenizer))
    assert [o["reward_score"] for o in outputs] == pytest.approx(EXPECTED)


def test_legacy_batch_manager_calls_compute_score_batch(
    tiny_tokenizer, tiny_tokenizer_dir, fliprm_server
):
    """``reward_manager=batch``: one plural call of our sync compute_score_batch."""
    cfg = verl_config(
        tiny_tokenizer_dir, "compute_score_batch", {"server_url": fliprm_server.url}
    )
    fn = get_custom_reward_fn(cfg)
    manager = get_reward_manager_cls("batch")(
        tokenizer=tiny_tokenizer, num_examine=0, compute_score=fn
    )
    data = rollout_batch(tiny_tokenizer)
    out = manager(data, return_dict=True)
    assert last_token_rewards(data, out["reward_tensor"]) == pytest.approx(EXPECTED)
    assert out["reward_extra_info"]["score"] == pytest.approx(EXPECTED)
    assert failed_flags({k: v[-1] for k, v in out["reward_extra_info"].items()}) == [1.0]


async def test_reward_loop_with_verl_managed_judge_router(tiny_tokenizer, tiny_tokenizer_dir):
    """A verl-managed GenRM: the worker passes ``reward_router_address`` and the reward
    model's tokenizer; the adapter posts OpenAI chat JSON to that router."""
    seen: list[dict] = []
    router = FastAPI()

    @router.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        seen.append(body)
        try:
            content = scripted_judge(body["messages"])
        except BadResponse:
            content = "not json at all"  # parse_failure="error": a failed item
        return {
            "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        }

    with ServerThread(router) as srv:
        cfg = verl_config(tiny_tokenizer_dir, "compute_score", {"method": "f1"})
        cfg.reward.reward_model.enable = True
        cfg.reward.reward_model.model_path = str(tiny_tokenizer_dir)
        worker = RewardLoopWorker(cfg, reward_router_address=f"{srv.host}:{srv.port}")
        outputs = await worker.compute_score_batch(rollout_batch(tiny_tokenizer))
    assert [o["reward_score"] for o in outputs] == pytest.approx(EXPECTED)
    assert len(seen) == 3
    # the judge model is named after the reward model verl loaded
    assert {b["model"] for b in seen} == {str(tiny_tokenizer_dir)}
