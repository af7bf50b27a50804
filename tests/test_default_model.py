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
    # explain never changes the reward
    (plain,) = FlipReward(embedded_backend).score([INSTR], [RESP])
    assert plain.reward == pytest.approx(own.reward, abs=1e-9)


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
    through one slot. Batched decoding sums floats in another order, so log-probabilities may
    differ in the last digits; measured on this model (2026-12-06): the largest reward difference
    is printed below and was far under the tolerance, which sits well below the smallest gap
    between rewards a ranking depends on here."""
    from fliprm.backends.embedded import EmbeddedBackend
    from fliprm.model import default_model_path

    try:
        default_model_path()
    except Exception:  # noqa: BLE001
        pytest.skip("embedded model not installed (run scripts/setup.sh)")
    import os

    if os.environ.get("FLIPRM_SKIP_MODEL_TESTS") == "1":
        pytest.skip("FLIPRM_SKIP_MODEL_TESTS=1")
    instr, resp = [x for x, _ in ITEMS], [y for _, y in ITEMS]
    with FlipReward(EmbeddedBackend(n_ctx=2048, n_parallel=4)) as rm:
        assert rm.backend.n_parallel == rm.backend.max_concurrency == 4
        t0 = time.perf_counter()
        together = rm.score(instr, resp)
        t_together = time.perf_counter() - t0
    with FlipReward(EmbeddedBackend(n_ctx=2048, n_parallel=1)) as rm:
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
TOLERANCE = 0.02
