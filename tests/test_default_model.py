"""The default reward (pmi with the echo guard) on the real embedded model: it tells an answer's
own instruction from an unrelated one, ``explain`` shows the instruction the model reads out of
the answer, and llama.cpp's parallel slots give the rewards one slot gives."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from fliprm import FlipReward

pytestmark = pytest.mark.model

INSTR = "Name the capital of France."
RESP = "The capital of France is Paris."
OTHER = "Write a haiku about autumn leaves."


def test_the_default_tells_the_own_instruction_and_explains_it(embedded_backend):
    rm = FlipReward(embedded_backend, explain=True)
    assert (rm.config.method, rm.config.mask_echo) == ("pmi", True)
    own, other = rm.score([INSTR, OTHER], [RESP, RESP])
    assert own.error is None and other.error is None, (own.error, other.error)
    assert own.reward > other.reward + 0.2, (own.reward, other.reward)
    assert own.inferred_instruction and own.inferred_instruction.strip()
    assert "inferred_f1" in own.extra and "explain_error" not in own.extra
    # the generation sees only the response: one instruction inferred for both
    assert other.inferred_instruction == own.inferred_instruction


def _backend(**kw):
    import os

    from fliprm.backends.embedded import EmbeddedBackend
    from fliprm.model import default_model_path

    if os.environ.get("FLIPRM_SKIP_MODEL_TESTS") == "1":
        pytest.skip("FLIPRM_SKIP_MODEL_TESTS=1")
    try:
        default_model_path()
    except Exception:  # noqa: BLE001
        pytest.skip("embedded model not installed (run scripts/setup.sh)")
    return EmbeddedBackend(n_ctx=2048, **kw)


def test_explain_never_changes_the_reward_on_the_model():
    """Exact mode (one slot, no prefix reuse): every call is computed alone, so the rewards
    with and without the explanation must be the same floats. (With slots, concurrent calls
    share decode batches and differ in the last digits; see the slots test.)"""
    with FlipReward(_backend(reuse_prompt_cache=False), explain=True) as rm:
        explained = rm.score([INSTR, OTHER], [RESP, RESP])
        plain = FlipReward(rm.backend).score([INSTR, OTHER], [RESP, RESP])
    assert [r.reward for r in explained] == [r.reward for r in plain]
    assert explained[0].inferred_instruction and plain[0].inferred_instruction is None


def test_demo_shows_inferred_instructions_and_wins():
    from fliprm.cli.demo import PAIRS
    from fliprm.cli.main import _register, app

    _register()
    res = CliRunner().invoke(app, ["demo"], terminal_width=200)
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "Own instruction scored higher in 3/3" in text, res.output
    assert "(pmi)" in text and len(PAIRS) == 3
    # every row shows an inferred instruction, not an empty cell or an error
    assert "error" not in text.lower().replace("explain_error", ""), res.output


ITEMS = [
    ("Name the capital of France.", "The capital of France is Paris."),
    ("Give me three tips for sleeping better.",
     "Keep a regular schedule, avoid screens before bed, and keep the bedroom cool."),
    ("Write a haiku about autumn leaves.",
     "Red leaves drift and fall / the cold wind hums / branches wait for snow"),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
]


def test_parallel_slots_give_the_rewards_of_one_slot():
    """4 concurrent pmi items through 4 llama.cpp slots against the same items one at a time
    through one slot. Calls in slots share decode batches, and a batch of several sequences takes
    other kernels and summation orders than a batch of one, so log-probabilities differ by more
    than the last digit: measured on the default model (2026-12-06, two runs, these 4 items) the
    largest differences were 8.5e-3 and 5.4e-3 in the reward (4.2e-2 nats in the mean pmi; the
    reward is sigmoid(pmi), slope <= 1/4), and 2.65e-2 in a CI run on a loaded machine (its
    prefixes reused from earlier tests differ too). TOLERANCE = 0.05 is ~2x the largest seen,
    and 4x below the 0.2 by which the default must tell an answer's own instruction from
    another; exact mode (one slot, no reuse) is the bit-identical path."""
    instr, resp = [x for x, _ in ITEMS], [y for _, y in ITEMS]
    with FlipReward(_backend(n_parallel=4)) as rm:
        assert rm.backend.n_parallel == rm.backend.max_concurrency == 4
        t0 = time.perf_counter()
        together = rm.score(instr, resp)
        t_together = time.perf_counter() - t0
    with FlipReward(_backend(n_parallel=1)) as rm:
        t0 = time.perf_counter()
        alone = [rm.score([x], [y])[0] for x, y in ITEMS]
        t_alone = time.perf_counter() - t0
    assert all(r.error is None for r in together + alone), [r.error for r in together + alone]
    diffs = [abs(a.reward - b.reward) for a, b in zip(together, alone)]
    print(f"slots: max |reward diff| {max(diffs):.2e}, max |pmi diff| "
          f"{max(abs(a.extra['pmi'] - b.extra['pmi']) for a, b in zip(together, alone)):.2e}; "
          f"{t_together:.1f} s in 4 slots, {t_alone:.1f} s one at a time")
    assert max(diffs) <= TOLERANCE, diffs


#: see test_parallel_slots_give_the_rewards_of_one_slot
TOLERANCE = 0.05
