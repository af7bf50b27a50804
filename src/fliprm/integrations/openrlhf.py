"""FLIP for OpenRLHF: the ``--reward.remote_url /path/to/file.py`` mode (:func:`reward_func`).

For the HTTP mode, run ``fliprm serve`` and pass ``--reward.remote_url http://host:port/get_reward``
(older releases: ``--remote_rm_url``). Both modes share :func:`extract_response`.

OpenRLHF hands over ``queries`` (prompt + response, decoded *with* special tokens), ``prompts``
(the chat-templated prompt) and ``labels`` (``--data.label_key``). The instruction is the label:
point ``--data.label_key`` at a column holding the raw instruction.

Both modes return ``rewards`` = ``scores`` = the configured method's reward (pmi under the RL
default, F1 with ``method="f1"``), numeric ``extra_logs`` named after what they are
(``flip_failed`` and the method's own numbers, see :func:`rewards_payload`), and the text per
sample under ``extra_info`` (``flip_method``, ``flip_inferred_instruction``), which OpenRLHF
does not read but a wrapper or a log of the HTTP replies can.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Absolute imports: verl and OpenRLHF load this file by path, outside its package.
from fliprm.integrations._common import (
    FlipSettings,
    failed,
    method_logs,
    run_sync,
    score_batch,
)
from fliprm.reward import FlipResult

__all__ = ["END_OF_TURN_MARKERS", "extract_response", "reward_func", "rewards_payload"]

#: where a response ends, across common chat templates
END_OF_TURN_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "<|eom_id|>",
    "<|return|>",
    "<｜end▁of▁sentence｜>",
)
# Any leftover special token: <|...|>, <｜...｜>, <s>, <pad>, <unk>.
_SPECIAL = re.compile(r"<\|[^<>|]{1,64}\|>|<｜[^<>｜]{1,64}｜>|</?s>|<pad>|<unk>")


def extract_response(query: str, prompt: str | None) -> str:
    """The response inside an OpenRLHF query: after the prompt, before the end-of-turn marker.

    >>> extract_response("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>"
    ...                  "<|endoftext|>", "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
    'Hello!'
    """
    text = query
    if prompt:
        if text.startswith(prompt):
            text = text[len(prompt) :]
        else:
            # Left padding or a BOS added at decode time shifts the prompt: find it instead.
            at = text.find(prompt)
            if at >= 0:
                text = text[at + len(prompt) :]
    cut = min((i for i in (text.find(m) for m in END_OF_TURN_MARKERS) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    return _SPECIAL.sub("", text).strip()


def _label_text(label: Any) -> Any:
    # Label columns sometimes hold a one-element list (several verifiers per row).
    if isinstance(label, (list, tuple)) and len(label) == 1:
        return label[0]
    return label


def rewards_payload(
    results: Sequence[FlipResult], failure_score: float, method: str = "pmi"
) -> dict[str, Any]:
    """Results as OpenRLHF's reply: ``rewards`` and ``scores`` (both the reward, or
    ``failure_score`` for a failed item), numeric ``extra_logs`` (``flip_failed`` plus the
    method's own numbers: ``flip_pmi``/``flip_logprob``, or ``flip_precision``/``flip_recall``/
    ``flip_parse_ok`` for f1) and text under ``extra_info``. ``method`` names the logs of an
    empty batch; otherwise the results' own method does.

    >>> out = rewards_payload([FlipResult(reward=0.75, method="pmi", extra={"pmi": 1.1})], 0.0)
    >>> out["rewards"], sorted(out["extra_logs"]), out["extra_info"]["flip_method"]
    ([0.75], ['flip_failed', 'flip_logprob', 'flip_pmi'], ['pmi'])
    """
    bad = [failed(r) for r in results]
    rewards = [failure_score if f else float(r.reward) for r, f in zip(results, bad)]  # type: ignore[arg-type]
    logs: dict[str, list[float]] = {"flip_failed": [float(f) for f in bad]}
    # one key set per batch, from a result that was scored (a failure may not name a method)
    method = next((r.method for r, f in zip(results, bad) if not f), method)
    per_item = [method_logs(r) for r in results]
    for k in method_logs(FlipResult(reward=None, method=method)):
        logs[k] = [d.get(k, 0.0) for d in per_item]
    return {
        "rewards": rewards,
        "scores": list(rewards),
        "extra_logs": logs,
        "extra_info": {
            "flip_method": [method] * len(results),
            "flip_inferred_instruction": [r.inferred_instruction or "" for r in results],
        },
    }


async def ascore_openrlhf(
    queries: Sequence[str],
    prompts: Sequence[str] | None,
    labels: Sequence[Any] | None,
    settings: FlipSettings,
) -> list[FlipResult]:
    """Score OpenRLHF-shaped input with the process scorer (shared by the file mode)."""
    prompts = list(prompts) if prompts is not None else [None] * len(queries)  # type: ignore[list-item]
    labels = list(labels) if labels is not None else [None] * len(queries)
    # A query that is not text goes through as is, so the core gives that item a named error
    # (failure_score) instead of an AttributeError that would fail the whole batch.
    responses = [
        extract_response(q, p if isinstance(p, str) else None) if isinstance(q, str) else q
        for q, p in zip(queries, prompts)
    ]
    return await score_batch(settings, [_label_text(x) for x in labels], responses)


def reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any
) -> dict[str, Any]:
    """OpenRLHF file-mode reward: the FLIP reward per sample (the configured method's: pmi
    under the RL default), as torch tensors when torch is present. ``kwargs`` are FLIP
    settings; an unknown keyword raises :class:`~fliprm.errors.ConfigError`.

    Example:
        >>> reward_func(["<prompt>Paris.<|im_end|>"], ["<prompt>"],
        ...             ["Name the capital of France."])  # doctest: +SKIP
        {'rewards': tensor([0.62]), 'scores': tensor([0.62]), 'extra_logs': {...}, ...}
    """
    settings = FlipSettings.from_env(**kwargs)
    results = run_sync(ascore_openrlhf(queries, prompts, labels, settings))
    payload = rewards_payload(results, settings.adapter.failure_score, settings.config.method)
    try:
        import torch
    except ImportError:
        return payload
    return {
        "rewards": torch.tensor(payload["rewards"], dtype=torch.float32),
        "scores": torch.tensor(payload["scores"], dtype=torch.float32),
        "extra_logs": {
            k: torch.tensor(v, dtype=torch.float32) for k, v in payload["extra_logs"].items()
        },
        "extra_info": payload["extra_info"],
    }
