"""The real embedded model, end to end (acceptance: the inferred instruction is closer to the
true instruction than to an unrelated one)."""

import json
import re
from pathlib import Path

import pytest

from fliprm import FlipReward, f1_score
from helpers_fliprm import expected_reward

pytestmark = pytest.mark.model

PAIRS = [
    ("Write a haiku about autumn leaves.",
     "Autumn leaves falling,\nred and gold on the cold ground:\na haiku of fall."),
    ("Give me three tips for sleeping better.",
     ("Here are three tips for better sleep:\n1. Keep a regular sleep schedule.\n"
      "2. Avoid screens before bed.\n3. Keep your bedroom cool and dark.")),
    ("What is the boiling point of water at sea level?",
     "At sea level, water boils at 100 degrees Celsius (212 degrees Fahrenheit)."),
]

def test_inferred_instruction_is_closer_to_the_true_instruction(embedded_backend):
    rm = FlipReward(embedded_backend, max_tokens=256, method="f1")  # the F1 reward, named
    results = rm.score([x for x, _ in PAIRS], [y for _, y in PAIRS])
    closer = 0
    own_total = other_total = 0.0
    for i, r in enumerate(results):
        assert r.error is None and r.parse_ok, r
        assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.latency_s > 0
        own = f1_score(r.inferred_instruction, PAIRS[i][0]).f1
        other = f1_score(r.inferred_instruction, PAIRS[(i + 1) % len(PAIRS)][0]).f1
        assert own == pytest.approx(r.reward)
        closer += own > other
        own_total += own
        other_total += other
    assert closer == len(PAIRS), [r.inferred_instruction for r in results]
    assert own_total > other_total


def test_contextual_flip_on_a_real_conversation(embedded_backend):
    conv = [
        {"role": "user", "content": "I am planning a trip to Japan."},
        {"role": "assistant", "content": "Great! How can I help?"},
        {"role": "user", "content": "List three dishes I should try in Tokyo."},
    ]
    answer = "1. Sushi at Tsukiji.\n2. Ramen in Shinjuku.\n3. Tempura in Asakusa."
    # the default family keeps its own contextual twin; the paper's template keeps its own
    for template, contextual in (("flip-short", "flip-short-contextual"), ("flip", "flip-contextual")):
        rm = FlipReward(embedded_backend, max_tokens=256, template=template, method="f1")
        (r,) = rm.score([conv], [answer])
        assert r.error is None and r.template == contextual and r.parse_ok, r
        # the instruction of a conversation is its last user turn
        assert r.reward == pytest.approx(expected_reward(r, conv[-1]["content"]))


def test_likelihood_prefers_the_matching_response(embedded_backend):
    # for one instruction (a GRPO group, a best-of-N pool), the matching answer is likelier
    rm = FlipReward(embedded_backend, method="likelihood")
    instr = [x for x, _ in PAIRS]
    resp = [y for _, y in PAIRS]
    own = rm.score(instr, resp)
    other = rm.score(instr, resp[1:] + resp[:1])
    assert all(r.error is None and r.logprob < 0 for r in own + other)
    assert sum(o.reward > u.reward for o, u in zip(own, other)) == len(PAIRS)


def test_pmi_prefers_the_matching_instruction(embedded_backend):
    # across instructions (one response, its prompt vs another prompt) the raw likelihood
    # favours whichever instruction is easier to predict ("What is the boiling point of water
    # at sea level?" was as likely as the true sleep question for the sleep answer, measured);
    # the empty-response baseline of the pmi method removes that prior
    rm = FlipReward(embedded_backend, method="pmi")
    instr = [x for x, _ in PAIRS]
    resp = [y for _, y in PAIRS]
    own = rm.score(instr, resp)
    other = rm.score(instr[1:] + instr[:1], resp)
    assert all(r.error is None and 0 < r.reward < 1 for r in own + other)
    for r, x in zip(own + other, instr + instr[1:] + instr[:1]):
        assert r.reward == pytest.approx(expected_reward(r, x))
    assert all(r.extra["pmi"] > 0.5 for r in own)
    assert sum(o.reward > u.reward for o, u in zip(own, other)) == len(PAIRS)


def test_overlong_response_is_cut_to_fit_the_context(embedded_backend):
    from fliprm.backends.embedded import EmbeddedBackend

    small = EmbeddedBackend(n_ctx=512)
    # F1: one call, so its prompt_tokens is that call's, which must fit
    rm = FlipReward(small, max_tokens=48, method="f1")
    (r,) = rm.score(["Describe the sea."], ["The sea is vast and blue. " * 300])
    assert r.error is None and r.truncated and r.prompt_tokens <= 512
    # the default (pmi) cuts it too; its prompt_tokens sum the forced call and the baseline's
    (r,) = FlipReward(small, max_tokens=48).score(["Describe the sea."],
                                                  ["The sea is vast and blue. " * 300])
    assert r.error is None and r.truncated and r.method == "pmi"
    small.close()


def test_without_prompt_cache_reuse_an_item_scores_the_same_after_any_other(embedded_backend):
    """``reuse_prompt_cache=False`` (``fliprm score --exact``): the log-probabilities of one
    request do not depend on which request ran before it, to the bit. With reuse, the shared
    system prefix comes from the previous call and the rest of the prompt runs in a different
    batch split (measured: logprobs moved by up to 0.05, and 2 of 200 greedy IFBench rewards
    differed between a sequential and a sharded Ray run)."""
    import asyncio

    from fliprm._types import GenerateRequest
    from fliprm.backends.embedded import EmbeddedBackend

    system = {"role": "system", "content": "Infer the instruction that produced the response. " * 8}

    def req(response: str) -> GenerateRequest:
        return GenerateRequest(messages=(system, {"role": "user", "content": response}),
                               forced_text=PAIRS[1][0])

    exact = EmbeddedBackend(n_ctx=4096, n_threads=embedded_backend.n_threads, reuse_prompt_cache=False)

    async def target_after(before: str | None):
        if before is not None:
            await exact.generate(req(before))
        return await exact.generate(req(PAIRS[1][1]))

    try:
        runs = [asyncio.run(target_after(b)) for b in (None, PAIRS[0][1], PAIRS[2][1], PAIRS[1][1])]
    finally:
        exact.close()
    assert all(c.token_logprobs for c in runs)
    assert all(c.token_logprobs == runs[0].token_logprobs for c in runs)
    # the same request twice in a row: nothing was taken from the previous call
    assert runs[-1].cached_prompt_tokens in (0, None)


# ---- what a new user meets first: `fliprm demo` and the README's Python example ---------------


def _topic(text: str | None, *words: str) -> bool:
    low = (text or "").lower()
    return any(w in low for w in words)


def test_demo_shows_plausible_instructions(embedded_backend, monkeypatch):
    # Regression: the demo showed '", format, and the inference is that the response is"' as
    # an inferred instruction (a reasoning cut mid-sentence spilled into the instruction).
    from typer.testing import CliRunner

    from fliprm.cli import _config_options
    from fliprm.cli.demo import PAIRS
    from fliprm.cli.main import _register, app

    seen = []

    def reward(self, **kwargs):  # the session's model, the demo's own settings
        rm = FlipReward(embedded_backend, config=self.config.updated(n_ctx=embedded_backend.n_ctx),
                        runtime=self.runtime, cache=kwargs.get("cache"))
        seen.append(rm)
        return rm

    monkeypatch.setattr(_config_options.CliSettings, "reward", reward)
    monkeypatch.setattr(FlipReward, "aclose", lambda self: _noop())
    _register()
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    assert f"Own instruction scored higher in {len(PAIRS)}/{len(PAIRS)}" in " ".join(res.output.split())
    results = seen[0].score([x for x, _ in PAIRS], [y for _, y in PAIRS])
    topics = [("haiku", "poem"), ("sleep",), ("photosynthesis",)]
    for r, words in zip(results, topics):
        assert r.parse_ok and _topic(r.inferred_instruction, *words), r.inferred_instruction
        assert not r.inferred_instruction.lstrip().startswith((",", "and ", "the "))


async def _noop() -> None:
    return None


def test_readme_python_example_gives_plausible_instructions_and_rewards(embedded_backend):
    # Regression: the README's example scored the correct sleep-tips answer 0.0 (a bare
    # three-line list, which the 0.5B model copies instead of inverting: a known limit, now
    # documented). The example scores the demo's pairs, and this test scores what it shows.
    from fliprm.cli.demo import PAIRS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```python", 1)[1].split("```", 1)[0]
    joined = re.sub(r'"\s*\n\s*"', "", block)  # adjacent string literals, as Python joins them
    shown = [(x, y) for x, y in PAIRS if json.dumps(y)[1:-1] in joined and x in joined]
    assert len(shown) >= 2, "the README example must score the demo's pairs"
    # the example asks for the explanation: the default reward (pmi) infers nothing otherwise
    assert "FlipReward(explain=True)" in block
    rm = FlipReward(embedded_backend, explain=True)
    topics = {PAIRS[0][0]: ("haiku", "poem"), PAIRS[1][0]: ("sleep",), PAIRS[2][0]: ("photosynthesis",)}
    results = rm.score([x for x, _ in shown], [y for _, y in shown])
    for (x, _), r in zip(shown, results):
        assert _topic(r.inferred_instruction, *topics[x]) and r.reward > 0.0, r
