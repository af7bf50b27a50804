"""open-instruct verifier shape: __call__(tokenized_prediction, prediction, label, query=None)."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fliprm.integrations.open_instruct import (
    FlipVerifier,
    FlipVerifierConfig,
    VerificationResult,
    register_with_open_instruct,
)

INSTR = "Name the capital of France."


#: a stand-in open-instruct package with upstream's verifier contract (it is not on PyPI)
FAKE_OI = Path(__file__).resolve().parents[1] / "fixtures" / "fake_open_instruct"


def test_module_does_not_import_open_instruct_even_when_importable():
    # in a fresh interpreter where `import open_instruct` would succeed: the adapter must
    # still leave it alone until register_with_open_instruct() is called
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('open_instruct') is not None\n"
        "import fliprm.integrations.open_instruct as m\n"
        "m.FlipVerifier()\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'open_instruct'))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_OI), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.fixture
def fake_open_instruct(monkeypatch):
    """open-instruct's ground_truth_utils importable for one test; fliprm's registration and
    the imported modules are undone afterwards."""
    import fliprm.integrations.open_instruct as adapter

    monkeypatch.syspath_prepend(str(FAKE_OI))
    monkeypatch.setattr(adapter, "_registered", None)
    yield importlib.import_module("open_instruct.ground_truth_utils")
    for name in [k for k in sys.modules if k.split(".")[0] == "open_instruct"]:
        del sys.modules[name]  # not monkeypatch.delitem: its undo would put them back


def test_registered_verifier_is_found_and_called_by_open_instruct(fake_reward, fake_open_instruct):
    gtu = fake_open_instruct
    fake_reward()
    cls = register_with_open_instruct()
    assert register_with_open_instruct() is cls  # once: a second subclass would be a duplicate
    assert issubclass(cls, gtu.VerifierFunction) and cls in gtu.VerifierFunction.__subclasses__()
    # what open-instruct does at startup: every subclass built from its args, filed by name
    args = type("Args", (), {"flip_max_tokens": 50, "lr": 1e-6})()
    verifiers = gtu.build_all_verifiers(args)
    assert list(verifiers) == ["general-flip"]
    v = verifiers["general-flip"]
    assert v.verifier_config == FlipVerifierConfig(flip_max_tokens=50)
    res = v([1, 2], "Paris.", [INSTR], query="user: Name the capital of France.")
    # open-instruct's own result type, with the F1 of the inferred vs. the real instruction
    assert type(res) is gtu.VerificationResult
    assert (res.score, res.cost) == (1.0, 0.0) and INSTR in res.reasoning
    failed = asyncio.run(v.async_call([], "FAIL", INSTR))
    assert type(failed) is gtu.VerificationResult and failed.score == 0.0


def test_sync_call_scores_against_label(fake_reward):
    fake_reward()
    v = FlipVerifier()
    res = v([1, 2, 3], "Paris.", INSTR, query="ignored")
    assert isinstance(res, VerificationResult)
    assert (res.score, res.cost) == (1.0, 0.0) and INSTR in res.reasoning
    assert v.name == "general-flip" and v.weight == 1.0


async def test_async_call_and_list_label(fake_reward):
    fake_reward()
    res = await FlipVerifier().async_call([], "Paris.", [INSTR])
    assert res.score == 1.0


async def test_failure_is_zero_with_reason(fake_reward):
    fake_reward()
    res = await FlipVerifier().async_call([], "FAIL", INSTR, rollout_state=None)
    assert res.score == 0.0 and "flip failed" in res.reasoning


def test_config_from_args_picks_flip_fields_only():
    args = type("Args", (), {"flip_server_url": "http://h:1", "flip_max_tokens": 50, "lr": 1})()
    cfg = FlipVerifier.get_config_class().from_args(args, None)
    assert cfg == FlipVerifierConfig(flip_server_url="http://h:1", flip_max_tokens=50)
    s = cfg.settings()
    assert (s.adapter.server_url, s.config.max_tokens) == ("http://h:1", 50)


def test_register_needs_open_instruct():
    import importlib.util

    if importlib.util.find_spec("open_instruct") is None:
        # skipped only when absent: an installed open-instruct that fails to import must fail
        pytest.skip("open-instruct is not installed: it is not on PyPI (README, open-instruct)")
    cls = register_with_open_instruct()
    assert cls.__name__ == "OpenInstructFlipVerifier"


def test_every_fliprm_setting_is_a_flip_field_of_the_verifier_config():
    # derived from the config objects: a new setting reaches open-instruct with no edit here
    from fliprm.integrations._common import known_settings

    names = {f"flip_{n}" for n in known_settings()}
    assert names == set(FlipVerifierConfig.__dataclass_fields__)
    args = type("Args", (), {"flip_method": "likelihood", "flip_mask_echo": False,
                             "flip_template": "flip", "unrelated": 1})()
    s = FlipVerifierConfig.from_args(args).settings()
    assert (s.config.method, s.config.mask_echo, s.config.template) == ("likelihood", False, "flip")


def test_unknown_keyword_is_an_error_and_rollout_state_is_known(fake_reward):
    fake_reward()
    v = FlipVerifier()
    assert v([], "Paris.", INSTR, rollout_state=object()).score == 1.0
    with pytest.raises(TypeError, match="bogus"):
        v([], "Paris.", INSTR, bogus=1)
