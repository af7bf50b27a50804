"""Methods and backends are registrations: a toy method and a toy backend defined here, outside
src, registered the way a plugin does, run through every entry point (library, CLI in process
and in a subprocess through ``FLIPRM_PLUGINS``, server, ``fliprm eval``) and the fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fliprm
from fliprm import FlipResult, FlipReward, RewardConfig
from fliprm.backends import build_backend, get_backend, is_local_model
from fliprm.backends.fake import FakeBackend
from fliprm.config import RuntimeOptions
from fliprm.errors import ConfigError
from fliprm.judges import JUDGES, get_judge
from fliprm.registry import (
    backend_spec,
    method_names,
    method_spec,
    register_backend,
    register_method,
    unregister_backend,
    unregister_method,
)

FIX = Path(__file__).parent / "fixtures"


class LengthMethod:
    """reward = len(response) / (1 + len(response)); asks the backend nothing."""

    name = "length"

    def __init__(self, config: RewardConfig) -> None:
        self.config = config

    async def run(self, runner, item) -> FlipResult:
        n = len(item.response)
        return FlipResult(reward=n / (1 + n), method=self.name, parse_ok=True)


class ToyBackend(FakeBackend):
    """The scripted dry run under its own name and model id."""

    name = "toy"

    def __init__(self, **options) -> None:
        super().__init__(model_id="toy-model", **options)


def register_toys() -> None:
    """What a plugin does (``FLIPRM_PLUGINS=test_registry:register_toys``)."""
    register_method("length", needs_logprobs=False, help="len(response) / (1 + len(response))")(
        LengthMethod)
    register_backend("toy", factory=ToyBackend, supports_forced_decoding=True,
                     help="a FakeBackend under another name")


@pytest.fixture
def toys():
    register_toys()
    yield
    unregister_method("length")
    unregister_backend("toy")


def length_reward(text: str) -> float:
    return len(text) / (1 + len(text))


def _cli(*args: str):
    from fliprm.cli.main import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


# ---- the built-ins are registrations ---------------------------------------------------------


def test_builtin_methods_and_backends_are_registered_with_their_capabilities():
    assert method_names() == ["f1", "likelihood", "pmi", "pmi-min"]
    f1, pmi = method_spec("f1"), method_spec("pmi")
    assert (f1.needs_logprobs, f1.supports_samples, f1.generates, f1.judge) == (False, True, True, "flip")
    assert (pmi.needs_logprobs, pmi.supports_samples, pmi.judge) == (True, False, "flip-pmi")
    assert method_spec("likelihood").judge == "flip-likelihood"
    assert backend_spec("embedded").local and backend_spec("gguf").local
    assert not backend_spec("openai").local and backend_spec("openai").supports_prompt_logprobs
    assert is_local_model("embedded:qwen") and not is_local_model("fake")
    assert list(JUDGES)[:3] == ["flip", "flip-likelihood", "flip-pmi"]


def test_builtin_fingerprints_are_unchanged_byte_for_byte():
    # computed before the registries existed: a resumable run recorded then must still resume
    golden = [
        ({}, "9dec6e43489d3909", "e038c946b674026e"),
        ({"method": "f1"}, "69489fc00a86606c", "61cc22b4e88fc278"),
        ({"method": "likelihood", "backend": "openai:m"}, "abf2e5f4115a6ce3", "f7a9b46fbe4aa8b9"),
        ({"backend": "gguf:/x.gguf", "method": "pmi"}, "ebfc1a4e7c40536e", "67c39169658b64b1"),
        ({"backend": "fake", "method": "f1", "samples": 3, "temperature": 0.7},
         "a741c5b306c525a7", "59153ee61dcf2a5e"),
    ]
    for kw, plain, with_id in golden:
        cfg = RewardConfig(**kw)
        assert (cfg.fingerprint(), cfg.fingerprint("mid-123")) == (plain, with_id), kw
    assert FlipReward("fake").fingerprint() == "e54f123379314997"
    assert FlipReward("fake", method="f1").fingerprint() == "d2c8430d7a1e6e36"


def test_unknown_names_are_one_line_errors_naming_the_registered_ones(toys):
    with pytest.raises(ConfigError) as e:
        RewardConfig(method="nope")
    assert str(e.value) == "method: unknown method 'nope'; registered: f1, length, likelihood, pmi, pmi-min"
    with pytest.raises(ConfigError) as e:
        RewardConfig(backend="nope")
    assert str(e.value) == ("backend: unknown backend 'nope'; use embedded, embedded:NAME, "
                            "gguf:PATH, openai[:MODEL], fake or toy")
    with pytest.raises(ConfigError, match="unknown backend 'nope:x'"):
        get_backend("nope:x")


def test_registering_another_class_under_a_taken_name_is_refused(toys):
    class Other(LengthMethod):
        pass

    with pytest.raises(ConfigError, match="method 'length' is already registered by"):
        register_method("length", needs_logprobs=False)(Other)
    register_toys()  # the same definition again (a plugin imported twice) is fine
    assert method_spec("length").factory is LengthMethod


# ---- the library ----------------------------------------------------------------------------


def test_toy_method_scores_through_the_library_without_a_backend_call(toys):
    rm = FlipReward("toy", method="length", mask_echo=False)
    res = rm.score(["Say hi.", "Name a colour."], ["hi there", "Blue."])
    assert [r.reward for r in res] == [length_reward("hi there"), length_reward("Blue.")]
    assert [r.method for r in res] == ["length", "length"]
    assert all(r.error is None and r.model == "toy-model" for r in res)
    assert rm.backend.calls == []


def test_toy_backend_scores_like_the_fake_it_wraps_but_is_recorded_as_itself(toys):
    instr, resp = ["Give three sleep tips."], ["Three sleep tips: keep a schedule, dim lights."]
    toy = FlipReward("toy").score(instr, resp)[0]
    fake = FlipReward("fake").score(instr, resp)[0]
    assert toy.error is None and toy.reward == fake.reward and toy.extra["pmi"] == fake.extra["pmi"]
    rm = FlipReward("toy")
    assert rm.backend.name == "toy" and rm.identity()["backend"] == "toy"
    assert rm.identity()["model_id"] == "toy-model"


def test_a_registered_backend_object_is_recorded_under_its_own_name_not_fake(toys):
    # regression: any backend object not named embedded/gguf/openai/fake was recorded as "fake"
    rm = FlipReward(ToyBackend())
    assert rm.config.backend == "toy"
    assert rm.identity()["backend"] == "toy"

    class Unregistered(FakeBackend):
        name = "scripted"

    assert FlipReward(Unregistered()).config.backend == "fake"  # as before: not a known kind


def test_the_logprob_check_asks_the_method_not_the_name_f1(toys):
    # regression: every method but f1 was assumed to need forced decoding
    backend = ToyBackend()
    backend.supports_forced_decoding = False
    assert FlipReward(backend, method="length").config.method == "length"
    with pytest.raises(ConfigError, match="method='pmi' needs the instruction's log-probabilities"):
        FlipReward(backend)


def test_samples_follow_the_method_capability(toys):
    with pytest.raises(ConfigError) as e:
        RewardConfig(method="length", samples=2, temperature=0.5)
    assert "samples > 1 applies to method='f1' ('length' does not sample)" in str(e.value)


def test_build_backend_uses_the_registered_options_mapping(toys):
    seen = {}

    def make(**options):
        seen.update(options)
        return ToyBackend()

    register_backend("mapped", factory=make, arg="label",
                     options=lambda cfg, rt: {"n_ctx": cfg.n_ctx, "timeout": rt.timeout})
    try:
        build_backend(RewardConfig(backend="mapped:abc", n_ctx=1024), RuntimeOptions(timeout=7))
    finally:
        unregister_backend("mapped")
    assert seen == {"n_ctx": 1024, "timeout": 7.0, "label": "abc"}


# ---- fingerprint and schema -----------------------------------------------------------------


def test_fingerprint_names_the_toy_method_and_differs_from_pmi(toys):
    length = FlipReward("toy", method="length")
    pmi = FlipReward("toy")
    assert length.identity()["method"] == "length"
    assert length.fingerprint() != pmi.fingerprint()
    assert length.fingerprint() == RewardConfig(backend="toy", method="length").fingerprint("toy-model")


def test_json_schema_and_cli_flags_list_the_registered_methods(toys):
    from fliprm.cli._config_options import _params

    assert RewardConfig.model_json_schema()["properties"]["method"]["enum"] == [
        "f1", "length", "likelihood", "pmi", "pmi-min"]
    params = {p.name: p for p in _params(RewardConfig, ())}
    method_help = params["method"].annotation.__metadata__[0].help
    assert method_help.startswith("pmi (default: the instruction's log-likelihood")
    assert "length (len(response) / (1 + len(response)))" in method_help
    assert "[f1|length|likelihood|pmi|pmi-min]" in method_help
    backend_help = params["backend"].annotation.__metadata__[0].help
    assert "fake (scripted dry run) | toy (a FakeBackend under another name)" in backend_help


def test_unregistered_toys_are_gone_everywhere():
    assert "length" not in method_names() and "flip-length" not in JUDGES
    with pytest.raises(ConfigError):
        RewardConfig(method="length")


# ---- judges, CLI, server, eval ----------------------------------------------------------------


def test_flip_judge_per_registered_method(toys):
    assert "flip-length" in JUDGES
    judge = get_judge("flip-length", backend=ToyBackend())
    assert judge.name == "flip-length" and judge.reward.config.method == "length"
    assert get_judge("flip", backend=ToyBackend()).name == "flip"


def test_cli_score_one_pair_with_the_toys(toys):
    res = _cli("score", "-i", "Say hi.", "-r", "hi there", "-b", "toy", "--method", "length",
               "--no-mask-echo", "--no-cache")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["reward"] == length_reward("hi there") and out["method"] == "length"


def _subprocess_cli(tmp_path: Path, plugins: str, *args: str) -> subprocess.CompletedProcess:
    src = Path(fliprm.__file__).parents[1]
    env = {**os.environ, "FLIPRM_PLUGINS": plugins, "FLIPRM_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).parent)])}
    return subprocess.run([sys.executable, "-m", "fliprm.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_subprocess_registers_the_toys_through_fliprm_plugins(tmp_path):
    data = tmp_path / "pairs.jsonl"
    pairs = [("Say hi.", "hi there"), ("Name a colour.", "Blue.")]
    data.write_text("".join(json.dumps({"id": str(i), "instruction": x, "response": y}) + "\n"
                            for i, (x, y) in enumerate(pairs)))
    out = tmp_path / "out.jsonl"
    proc = _subprocess_cli(tmp_path, "test_registry:register_toys", "score", str(data), "-o",
                           str(out), "-b", "toy", "--method", "length", "--no-mask-echo",
                           "--no-cache")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["reward"] for r in rows] == [length_reward(y) for _, y in pairs]
    assert {r["method"] for r in rows} == {"length"}


def test_cli_subprocess_plugin_that_fails_is_a_one_line_error(tmp_path):
    proc = _subprocess_cli(tmp_path, "no_such_fliprm_plugin", "score", "-i", "a", "-r", "b",
                           "-b", "fake", "--no-cache")
    assert proc.returncode == 2
    assert "FLIPRM_PLUGINS: cannot load plugin 'no_such_fliprm_plugin'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_server_scores_with_the_toys(toys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fliprm.server import create_app

    rm = FlipReward("toy", method="length", mask_echo=False)
    with TestClient(create_app(rm)) as client:
        r = client.post("/v1/score", json={"items": [
            {"instruction": "Say hi.", "response": "hi there"},
            {"instruction": "Name a colour.", "response": "Blue."}]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["reward"] for x in results] == [length_reward("hi there"), length_reward("Blue.")]
    assert {x["method"] for x in results} == {"length"}


def test_eval_runs_a_flip_length_judge(toys, tmp_path):
    out = tmp_path / "rb2"
    res = _cli("eval", "rewardbench2", "--data", str(FIX / "rb2_tiny.jsonl"), "--methods",
               "flip-length", "--subsets", "Focus", "--limit", "1", "-b", "toy",
               "--no-mask-echo", "-o", str(out))
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["flip-length"]["n_items"] == 1
    assert results["meta"]["settings"]["flip-length"]["method"] == "length"
    assert results["meta"]["settings"]["flip-length"]["backend"] == "toy"
    (rec,) = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    texts = ["The capital of France is Paris.", "Bananas are yellow fruits.",
             "Dogs like to play fetch.", "Water boils at 100 C."]
    assert sorted(rec["scores"]) == sorted(length_reward(t) for t in texts)
    assert rec["credit"] == 1.0  # the chosen answer is the longest
