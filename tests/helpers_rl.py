"""For tests that drive the real RL libraries: a tiny chat tokenizer and policy built
in-process, and a skip that fires only when a library is absent.

There is no model hub here, and the adapter tests must not need the embedded model, so the
tokenizer is a byte-level BPE trained in well under a second on a few sentences, with
ChatML special tokens and template (decodes round-trip exactly, as with Qwen's tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Name the capital of France. Paris is the capital of France.",
    "Write a haiku about rain. Soft rain on the roof, the garden drinks the sky.",
    "List three prime numbers: 2, 3 and 5.",
    "Answer in exactly three bullet points and use no commas.",
    "Write a short poem about the sea, all in lowercase letters.",
    "Explain photosynthesis in under fifty words. Wrap your answer in double quotes.",
    "user assistant system instruction response reward policy",
]


def tiny_chat_tokenizer(vocab_size: int = 512) -> Any:
    """A ``PreTrainedTokenizerFast`` with ChatML tokens, EOS ``<|im_end|>`` and a chat template.

    >>> tok = tiny_chat_tokenizer()  # doctest: +SKIP
    >>> tok.decode(tok("Paris.<|im_end|>")["input_ids"])  # doctest: +SKIP
    'Paris.<|im_end|>'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def save_tiny_policy(path: Path, *, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 (hidden 64) plus :func:`tiny_chat_tokenizer`, saved like a
    checkpoint, so ``from_pretrained(path)`` works offline. Returns ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = tiny_chat_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def require_installed(package: str, why: str) -> None:
    """Skip the calling test module only when ``package`` is absent: a package that is there
    but fails to import is a failure, not a skip."""
    import importlib.util

    import pytest

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: {why}", allow_module_level=True)


FRANCE = "Name the capital of France."


def scripted_judge(messages: list[dict]) -> str:
    """The FLIP judge of the real-library tests: an answer mentioning Paris is inferred as
    :data:`FRANCE`, anything else as "Write about something else entirely.", and an answer
    containing FAIL makes the call fail. Against "Write a haiku about rain." the second
    scores word F1 4/9 (P 2/5, R 2/4)."""
    from fliprm.errors import BadResponse

    text = messages[-1]["content"]
    if "FAIL" in text:
        raise BadResponse("judge exploded")
    inferred = FRANCE if "Paris" in text else "Write about something else entirely."
    return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": inferred})


def f1_reward() -> Any:
    """A FlipReward on :func:`scripted_judge`, ``method="f1"`` explicitly (the library's
    default method may change), failed parses as None rewards."""
    from fliprm import FlipReward
    from fliprm.backends.fake import FakeBackend

    return FlipReward(
        FakeBackend(lambda req: scripted_judge(req.messages)),
        method="f1", parse_failure="error", max_retries=0,
    )
