"""The embedded model's one-pass prompt log-probabilities (fliprm.backends._libllama)."""

from __future__ import annotations

import pytest

from fliprm import FlipReward, GenerateRequest
from fliprm.backends import _libllama
from fliprm.backends.embedded import EmbeddedBackend
from fliprm.errors import ConfigError, ContextOverflow
from helpers_fliprm import score_overlong_recipe

RESPONSE = ("1. Keep a regular sleep schedule, even at weekends.\n2. Avoid screens for an hour "
            "before bed.\n3. Keep the bedroom cool, dark and quiet.")
INSTRUCTION = "Give me three tips for sleeping better."


def forced_request(instruction: str = INSTRUCTION, response: str = RESPONSE) -> GenerateRequest:
    return GenerateRequest(
        messages=[{"role": "user", "content": f"Response:\n{response}\n\nWhat was the "
                   "instruction?"}],
        max_tokens=1, temperature=0.0, forced_text=instruction)


# ---- no model needed ----------------------------------------------------------------------------

@pytest.mark.parametrize("words,where", [
    ([512, 2048, 512, 1, 4, 4, 0, 0xFFFFFFFF], 4),           # llama.h of 2025
    ([512, 2048, 512, 1, 0, 0, 1, 4, 4, 0, 0xFFFFFFFF], 7),  # the pinned xllamacpp's
])
def test_the_context_layout_is_read_from_the_librarys_defaults(words, where) -> None:
    assert _libllama.context_layout(words) == _libllama.ContextLayout(n_threads=where)


@pytest.mark.parametrize("words", [
    [512, 2048, 512, 2, 4, 4, 0],         # other leading defaults
    [512, 2048, 512, 1, 0, 0, 1, 8, 8],   # no default thread pair where one is expected
    [4096, 512, 512, 1, 4, 4],
])
def test_an_unknown_layout_is_not_used(words) -> None:
    assert _libllama.context_layout(words) is None


def test_auto_falls_back_to_forced_steps_and_an_explicit_mode_is_refused(monkeypatch) -> None:
    monkeypatch.setattr("fliprm.backends.embedded.prompt_pass_supported", lambda: False)
    assert EmbeddedBackend(likelihood_mode="auto").likelihood_route == "forced"
    with pytest.raises(ConfigError, match="likelihood_mode forced"):
        EmbeddedBackend(likelihood_mode="prompt_logprobs").likelihood_route  # noqa: B018
    with pytest.raises(ConfigError, match="likelihood_mode"):
        EmbeddedBackend(likelihood_mode="sometimes")


def test_the_route_is_part_of_the_cache_identity(monkeypatch) -> None:
    monkeypatch.setattr("fliprm.backends.embedded.prompt_pass_supported", lambda: True)
    one_pass = EmbeddedBackend(likelihood_mode="auto")
    steps = EmbeddedBackend(likelihood_mode="forced")
    assert one_pass.cache_identity["likelihood"] == "prompt-pass"
    assert steps.cache_identity["likelihood"] == "forced"
    assert one_pass.cache_identity != steps.cache_identity


def test_the_one_pass_caches_two_sequences_whatever_the_slots() -> None:
    # one KV cache of n_ctx positions per cached sequence: with one per slot (8 x 8,192) the
    # default took 3.1 GB at peak; two (a response and its empty-response baseline) scored
    # focus4 and IFBench pairs as fast, 0.58 GB lighter (bench/README.md)
    for slots, seqs in ((8, 2), (2, 2), (1, 1)):
        scorer = EmbeddedBackend(n_parallel=slots, n_ctx=4096).prompt_scorer()
        assert (scorer.n_seqs, scorer.n_ctx) == (seqs, 4096), slots


def test_the_mode_reaches_the_embedded_backend_from_the_config() -> None:
    from fliprm.backends import build_backend
    from fliprm.config import RewardConfig, RuntimeOptions

    backend = build_backend(RewardConfig(likelihood_mode="forced"), RuntimeOptions())
    assert backend.likelihood_mode == "forced"


# ---- the real model -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stepping(embedded_backend):
    """A second instance of the embedded model that forces token by token."""
    backend = EmbeddedBackend(n_ctx=4096, likelihood_mode="forced", n_parallel=1)
    backend.start()
    yield backend
    backend.close()


@pytest.mark.model
def test_one_pass_gives_the_steps_log_probabilities(embedded_backend, stepping) -> None:
    assert embedded_backend.likelihood_route == "prompt-pass"
    one = embedded_backend._force(forced_request())
    steps = stepping._force(forced_request())
    assert one.extra["forced"] == "prompt-pass" and steps.extra["forced"] == "canonical-tokens"
    assert [t for t, _ in one.token_logprobs] == [t for t, _ in steps.token_logprobs]
    assert one.prompt_tokens == steps.prompt_tokens and one.completion_tokens > 5
    a = [lp for _, lp in one.token_logprobs]
    b = [lp for _, lp in steps.token_logprobs]
    # the same tokens and positions through other batch shapes: float rounding of the quantised
    # kernels (measured up to 0.14 nats on one token, 0.024 on the mean). A token read at the
    # wrong position or against the wrong context differs by several nats.
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.5, (a, b)
    assert sum(a) / len(a) == pytest.approx(sum(b) / len(b), abs=0.15)


@pytest.mark.model
def test_a_shared_response_is_evaluated_once_and_exact_mode_is_order_free(embedded_backend) -> None:
    scorer = _libllama.PromptScorer(embedded_backend.model_path, n_ctx=2048, n_threads=1,
                                    n_seqs=2)
    try:
        head = list(range(1000, 1300))
        first, cached = scorer.logprobs(head + [11, 12, 13], start=300)
        assert cached == 0 and len(first) == 3
        again, cached = scorer.logprobs(head + [21, 22], start=300)
        assert cached == 299 and len(again) == 2  # only the last head token and the tail
        fresh = [scorer.logprobs(head + [21, 22], start=300, reuse=False)[0] for _ in range(2)]
        scorer.logprobs(list(range(5, 400)), start=390)  # something else in between
        assert fresh[0] == fresh[1] == scorer.logprobs(head + [21, 22], start=300,
                                                       reuse=False)[0]
        assert again == pytest.approx(fresh[0], abs=0.5)
        with pytest.raises(ContextOverflow) as exc:
            scorer.logprobs(list(range(100, 2200)), start=2000)
        assert (exc.value.n_prompt, exc.value.n_ctx) == (2100, 2048)
    finally:
        scorer.close()


@pytest.mark.model
def test_the_default_reward_ranks_with_one_pass(embedded_backend) -> None:
    rm = FlipReward(embedded_backend)
    own, other = rm.score([INSTRUCTION, "Write a Python function that reverses a string."],
                          [RESPONSE, RESPONSE])
    assert own.error is None and other.error is None, (own.error, other.error)
    assert own.reward > other.reward + 0.1, (own.reward, other.reward)


@pytest.mark.model
@pytest.mark.slow
def test_a_response_longer_than_the_window_is_cut_to_fit_on_the_one_pass(embedded_backend) -> None:
    r = score_overlong_recipe()  # pmi: the instruction forced after the response
    assert r.error is None, r.error
    assert r.truncated is True and 0 < r.reward < 1
