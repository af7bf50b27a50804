"""FLIP as a verl custom reward function (``custom_reward_function.path`` / ``.name``).

verl does not pass the prompt to a reward function, so put the original instruction in the
row's ``extra_info["question"]`` (preferred) or ``reward_model.ground_truth``.

* :func:`compute_score`: per sample, async (the naive manager and the Reward Loop). When verl
  manages the judge (a GenRM behind its router) it passes ``reward_router_address="host:port"``
  and the judge is called at ``http://host:port/v1/chat/completions``; otherwise the judge comes
  from ``reward_kwargs`` / ``FLIPRM_*`` env vars (``base_url``, ``server_url``, ``backend``).
* :func:`compute_score_batch`: the ``batch`` reward manager's plural call (sync), and
  :func:`acompute_score_batch`, its async twin.

verl needs a number for every sample, so a failed judge call scores ``failure_score`` (0.0)
and is flagged by ``flip_failed = 1.0`` in the extra info. The extra info names each value after
what it is: ``flip_reward`` and ``flip_method`` (f1, likelihood or pmi), the method's own
numbers (f1: ``flip_precision``, ``flip_recall``, ``flip_parse_ok``; pmi: ``flip_pmi``,
``flip_logprob``; likelihood: ``flip_logprob``) and ``flip_inferred_instruction`` (text, empty
where the method made none); verl averages the numbers and skips the text in its metrics.

Keywords are FLIP settings (``reward_kwargs``) or verl's own (``reward_router_address``,
``reward_model_tokenizer``, ``model_name``, ``sampling_params``, ...); anything else is a
:class:`~fliprm.errors.ConfigError`, so a misspelt setting cannot go unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Absolute imports: verl and OpenRLHF load this file by path, outside its package.
from fliprm.integrations._common import FlipSettings, failed, method_logs, run_sync, score_batch
from fliprm.reward import FlipResult

__all__ = ["acompute_score_batch", "compute_score", "compute_score_batch"]

#: keywords verl itself passes to a custom reward function (reward loop, GenRM, forks); FLIP
#: decodes with its own settings, so these are accepted and not used (model_name: the model)
VERL_KEYWORDS = frozenset({"model_name", "sampling_params", "tokenizer", "total_len", "input_ids"})


def _instruction(ground_truth: Any, extra_info: Mapping[str, Any] | None) -> Any:
    if extra_info and extra_info.get("question"):
        return extra_info["question"]
    return ground_truth


def _settings(
    reward_router_address: str | None, reward_model_tokenizer: Any, kwargs: Mapping[str, Any]
) -> FlipSettings:
    settings = {k: v for k, v in kwargs.items() if k not in VERL_KEYWORDS}
    if not reward_router_address:
        return FlipSettings.from_env(**settings)
    # verl serves the judge itself: an OpenAI-compatible router with no key, named by its path.
    model = (kwargs.get("model") or kwargs.get("model_name")
             or getattr(reward_model_tokenizer, "name_or_path", None))
    return FlipSettings.from_env(
        **{
            **settings,
            "backend": "openai",
            "base_url": f"http://{reward_router_address}/v1",
            "model": model,
            "server_url": "",
            "api_key": kwargs.get("api_key") or "none",
        }
    )


def _to_dict(res: FlipResult, failure_score: float) -> dict[str, Any]:
    bad = failed(res)
    # the same keys for every sample of a method: verl gathers each key into one column
    return {
        "score": failure_score if bad else float(res.reward),  # type: ignore[arg-type]
        "flip_reward": 0.0 if bad else float(res.reward),  # type: ignore[arg-type]
        "flip_failed": float(bad),
        "flip_method": res.method,
        **method_logs(res),
        "flip_inferred_instruction": res.inferred_instruction or "",
    }


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """FLIP score of one response: the reward of the configured method (pmi under the RL
    default, F1 with ``method="f1"``). ``kwargs`` are verl's ``reward_kwargs`` (FlipSettings
    fields) or verl's own keywords; any other keyword raises :class:`ConfigError`.

    Example:
        >>> import asyncio
        >>> asyncio.run(compute_score("alpaca", "Paris is the capital of France.", "",
        ...     extra_info={"question": "Name the capital of France."},
        ...     server_url="http://127.0.0.1:8080"))  # doctest: +SKIP
        {'score': 0.62, 'flip_reward': 0.62, 'flip_failed': 0.0, 'flip_method': 'pmi', ...}
    """
    settings = _settings(reward_router_address, reward_model_tokenizer, kwargs)
    [res] = await score_batch(settings, [_instruction(ground_truth, extra_info)], [solution_str])
    return _to_dict(res, settings.adapter.failure_score)


async def acompute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Async twin of :func:`compute_score_batch`: one ``FlipReward.ascore`` call for the batch."""
    settings = _settings(reward_router_address, reward_model_tokenizer, kwargs)
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    instructions = [_instruction(g, e) for g, e in zip(ground_truths, infos)]
    results = await score_batch(settings, instructions, list(solution_strs))
    return [_to_dict(r, settings.adapter.failure_score) for r in results]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """For ``reward_manager=batch``: scores the whole batch at once; returns one dict per sample."""
    result: list[dict[str, Any]] = run_sync(
        acompute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs)
    )
    return result
