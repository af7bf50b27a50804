"""FLIP as a TRL reward function (``GRPOTrainer(reward_funcs=...)``, ``trl grpo --reward_funcs``).

FLIP (arXiv 2602.13551) rewards a completion by how well it lets a small LM recover the
instruction behind it, with no reference answer. The reward is the configured method's: under
the RL default (``rl`` preset) ``pmi``, sigmoid(log p(x|y) - log p(x|empty)) with the echo
guard; with ``method="f1"`` the paper's word-level F1 between the inferred and the real
instruction; with ``method="likelihood"`` exp(mean log p(x|y)). All lie in [0, 1].

Two entry points, both async (TRL runs async rewards concurrently):

* :func:`flip_reward`, configured by ``FLIPRM_*`` env vars, for the CLI:
  ``trl grpo ... --reward_funcs fliprm.integrations.trl.flip_reward``;
* :func:`get_flip_reward` ``(**settings)``, a picklable callable for Python scripts and
  ``AsyncGRPOTrainer``.

The judge is built lazily, once per process, on the first call (never at import, never pickled);
set ``FLIPRM_SERVER_URL`` to score on a shared ``fliprm serve`` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ._common import FlipSettings, reward_or_none, score_batch

__all__ = ["FlipRewardFunction", "flip_reward", "get_flip_reward"]


def _completion_text(completion: Any) -> Any:
    """A standard completion is a string; a conversational one is a list of messages."""
    if isinstance(completion, str) or completion is None:
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        replies = [m for m in completion if m.get("role", "assistant") == "assistant"]
        return (replies or list(completion))[-1].get("content")
    return completion  # let the core reject it with a named error


def _instructions(
    prompts: Sequence[Any] | None, n: int, column: str | None, kwargs: Mapping[str, Any]
) -> list[Any]:
    if column:
        if column not in kwargs:
            raise ConfigError(
                f"instruction column {column!r} is not among the dataset columns TRL passed "
                f"({sorted(k for k in kwargs if not k.startswith(('trainer_', 'log_')))})"
            )
        return list(kwargs[column])
    if prompts is None:
        raise ConfigError("flip_reward needs `prompts` or an instruction column")
    # Conversational prompts go to the core as messages: the last user turn is the
    # instruction and earlier turns become context. A standard prompt is the instruction.
    # Anything else (None, a number) goes through as is: the core rejects it, naming the item.
    return [list(p) if isinstance(p, (list, tuple)) else p for p in prompts][:n]


async def flip_reward(
    prompts: Sequence[Any] | None = None,
    completions: Sequence[Any] | None = None,
    *,
    log_extra: Callable[[str, list[Any]], None] | None = None,
    _settings: FlipSettings | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """FLIP reward for a batch of completions, by the configured method (pmi under the RL
    default; word F1 of the inferred vs. the real instruction with ``FLIPRM_METHOD=f1``).

    Args:
        prompts (`list[str]` or `list[list[dict]]`): standard or conversational prompts; the
            instruction is the whole prompt, or the last user turn of a conversation.
        completions (`list[str]` or `list[list[dict]]`): the policy outputs.
        log_extra (*optional*): TRL's logger; the inferred instruction of each completion
            (f1, or a pmi/likelihood result that carries one) is logged under
            ``flip_inferred_instruction`` (empty where the judge made none).
        **kwargs: dataset columns and trainer extras. With ``FLIPRM_INSTRUCTION_COLUMN`` set,
            the instruction is read from that column. Anything else is ignored.

    Returns:
        `list[float | None]`: the reward in [0, 1], one per completion and always its own;
        ``None`` where the judge call failed or a server's reply was malformed for that item
        (TRL then skips the sample); 0.0 for an empty completion.

    Example:
        >>> import asyncio, os
        >>> os.environ["FLIPRM_SERVER_URL"] = "http://127.0.0.1:8080"  # doctest: +SKIP
        >>> asyncio.run(flip_reward(prompts=["Name the capital of France."],
        ...                         completions=["Paris is the capital of France."]))  # doctest: +SKIP
        [0.62]
    """
    settings = _settings or FlipSettings.from_env()
    completions = list(completions or [])
    responses = [_completion_text(c) for c in completions]
    instructions = _instructions(prompts, len(responses), settings.adapter.instruction_column, kwargs)
    if len(instructions) != len(responses):
        raise ConfigError(f"got {len(instructions)} instructions for {len(responses)} completions")
    results = await score_batch(settings, instructions, responses)
    if log_extra is not None:
        log_extra("flip_inferred_instruction", [r.inferred_instruction or "" for r in results])
    return [reward_or_none(r) for r in results]


class FlipRewardFunction(functools.partial):  # type: ignore[type-arg]
    """:func:`flip_reward` bound to fixed settings; what :func:`get_flip_reward` returns.

    It is a ``functools.partial`` of the module-level coroutine function, *and* it has an
    ``async def __call__``: TRL releases before PR #7213 detect async rewards with
    ``inspect.iscoroutinefunction``, which sees through a partial but not through a class with
    an async ``__call__``; later releases check ``__call__`` too. Both see a coroutine here.
    It pickles as (function, settings), so it travels to ``AsyncGRPOTrainer`` workers.
    """

    __name__ = "flip_reward"

    async def __call__(self, /, *args: Any, **kwargs: Any) -> list[float | None]:
        return await self.func(*self.args, *args, **{**self.keywords, **kwargs})

    @property
    def settings(self) -> FlipSettings:
        settings: FlipSettings = self.keywords["_settings"]
        return settings


def get_flip_reward(**settings: Any) -> FlipRewardFunction:
    """Build a FLIP reward function with fixed settings (env vars fill in what is not given).

    Args:
        **settings: any :class:`~fliprm.config.RewardConfig`,
            :class:`~fliprm.config.RuntimeOptions` or adapter option, e.g.
            ``backend="openai"``, ``base_url=...``, ``server_url=...``, ``max_tokens=128``,
            ``method="likelihood"``, ``instruction_column="instruction"``, ``preset="paper"``.

    Example:
        >>> reward = get_flip_reward(server_url="http://127.0.0.1:8080", max_tokens=128)
        >>> reward.__name__, reward.settings.config.max_tokens
        ('flip_reward', 128)
    """
    return FlipRewardFunction(flip_reward, _settings=FlipSettings.from_env(**settings))
