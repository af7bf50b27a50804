"""One reward definition: the same reward through every door, and no silent wrong reward.

Regression tests for the problems found walking the product as a new user: a template lost on
chat items, cut-off JSON scored as parsed, a resume mixing settings or inputs, error records
invisible on resume, and the CLI's small gaps (stdin, --version, --extra-body, one-line errors).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fliprm import Completion, FlipReward, RewardConfig
from fliprm.backends.fake import FakeBackend
from fliprm.cli.main import _register, app
from fliprm.config import PRESETS, RuntimeOptions
from fliprm.errors import ConfigError
from helpers_fliprm import OpenAIStandIn, chat_reply

FIX = Path(__file__).parent / "fixtures"
CUT = '{"INFERRED INSTRUCTION": "The user asked about cats, and the response provided'


def cli(*args: str, input: str | None = None):
    _register()
    return CliRunner().invoke(app, list(args), input=input)


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


CHAT = {"id": "c", "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a cat breed."},
    {"role": "assistant", "content": "Siamese."}]}
PAIR = {"id": "p", "instruction": "Name a dog breed.", "response": "Beagle."}


# ---- 1. chat items keep the chosen template family, on every door ------------------------------


def test_cli_score_chat_items_keep_flip_short(tmp_path):
    inp = jsonl(tmp_path / "in.jsonl", [CHAT, PAIR])
    out = tmp_path / "out.jsonl"
    res = cli("score", str(inp), "-o", str(out), "-b", "fake", "--no-cache",
              "--template", "flip-short", "--max-tokens", "64")
    assert res.exit_code == 0, res.output
    by = {r["id"]: r for r in records(out)}
    assert by["c"]["template"] == "flip-short-contextual" and by["p"]["template"] == "flip-short"
    res = cli("score", str(inp), "-o", str(tmp_path / "paper.jsonl"), "-b", "fake", "--no-cache",
              "--preset", "paper")
    by = {r["id"]: r for r in records(tmp_path / "paper.jsonl")}
    assert by["c"]["template"] == "flip-contextual" and by["p"]["template"] == "flip"


def test_env_template_reaches_chat_items_in_the_adapters(monkeypatch):
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_TEMPLATE", "flip-short")
    s = FlipSettings.from_env(backend="fake")
    assert s.config.family().contextual.name == "flip-short-contextual"
    monkeypatch.setenv("FLIPRM_TEMPLATE", "flip")
    assert FlipSettings.from_env(backend="fake").config.family().contextual.name == "flip-contextual"


# ---- 2. a cut at max_tokens is a parse failure, under every policy -----------------------------


@pytest.mark.parametrize("policy", ["raw", "zero", "error"])
def test_output_cut_at_max_tokens_is_never_parsed(policy):
    fb = FakeBackend(lambda r: Completion(text=CUT, finish_reason="length", completion_tokens=64))
    (r,) = FlipReward(fb, parse_failure=policy, max_tokens=64).score(
        ["Tell me about cats."], ["Cats are small domesticated carnivores."])
    assert r.parse_ok is False and r.inferred_instruction is None
    assert "cut at max_tokens=64" in r.parse_error and "The user asked about cats" in r.parse_error
    if policy == "raw":  # the reference's fallback may still score the raw text, flagged
        assert r.reward is not None and r.error is None
    elif policy == "zero":
        assert r.reward == 0.0
    else:
        assert r.reward is None and "parse failure" in r.error


def test_a_cut_reply_is_not_cached():
    from fliprm import ResponseCache

    fb = FakeBackend(lambda r: Completion(text=CUT, finish_reason="length"))
    rm = FlipReward(fb, cache=ResponseCache(":memory:"))
    rm.score(["x"], ["y"])
    rm.score(["x"], ["y"])
    assert len(fb.calls) == 2


# ---- 3. a resume with other settings or another input is refused, naming what differs ----------


def test_cli_score_resume_refuses_other_settings_or_input(tmp_path):
    inp = jsonl(tmp_path / "in.jsonl", [PAIR, {**PAIR, "id": "q"}])
    out = tmp_path / "out.jsonl"
    base = ["score", str(inp), "-o", str(out), "-b", "fake", "--no-cache"]
    assert cli(*base, "--template", "flip-short").exit_code == 0
    n = len(records(out))
    for extra, what in ((["--template", "flip"], "template"),
                        (["--method", "likelihood"], "method"),
                        (["--max-tokens", "64"], "max_tokens: 512 -> 64"),
                        (["--mask-echo"], "mask_echo: false -> true")):
        res = cli(*base, *extra)
        text = " ".join(res.output.split())
        assert res.exit_code == 2, (extra, res.output)
        assert "other settings" in text and what in text and "--force" in text, text
        assert "Traceback" not in res.output
    other = jsonl(tmp_path / "other.jsonl", [{**PAIR, "response": "Poodle."}, PAIR])
    res = cli("score", str(other), "-o", str(out), "-b", "fake", "--no-cache")
    assert res.exit_code == 2 and "another input" in " ".join(res.output.split())
    assert len(records(out)) == n  # nothing mixed in
    # an input that only grew resumes: the finished lines are the same lines
    jsonl(inp, [PAIR, {**PAIR, "id": "q"}, {**PAIR, "id": "r"}])
    res = cli(*base, "--template", "flip-short")
    assert res.exit_code == 0, res.output
    assert [r["line"] for r in records(out)] == [1, 2, 3]
    # --force starts over with the new settings
    res = cli(*base, "--template", "flip", "--force")
    assert res.exit_code == 0 and {r["template"] for r in records(out)} == {"flip"}


def test_cli_score_refuses_output_equal_to_input(tmp_path):
    inp = jsonl(tmp_path / "in.jsonl", [PAIR])
    res = cli("score", str(inp), "-o", str(inp), "-b", "fake", "--no-cache")
    assert res.exit_code == 2 and "is the input file" in " ".join(res.output.split())
    assert records(inp) == [PAIR]


def test_cli_score_refuses_a_foreign_output(tmp_path):
    inp = jsonl(tmp_path / "in.jsonl", [PAIR])
    out = tmp_path / "out.jsonl"
    out.write_text("[1,2]\n")
    res = cli("score", str(inp), "-o", str(out), "-b", "fake", "--no-cache")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert out.read_text() == "[1,2]\n"


def test_cli_eval_resume_refuses_another_template(tmp_path):
    data, out = str(FIX / "rb2_tiny.jsonl"), str(tmp_path / "rb2")
    args = ["eval", "rewardbench2", "--data", data, "--methods", "flip", "-o", out, "-b", "fake"]
    assert cli(*args, "--template", "flip-short").exit_code == 0
    res = cli(*args, "--template", "flip")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "other settings" in text and "template" in text, text
    other = jsonl(tmp_path / "other.jsonl", [json.loads(x) for x in
                                             (FIX / "rb2_tiny.jsonl").read_text().splitlines()[:2]])
    res = cli("eval", "rewardbench2", "--data", str(other), "--methods", "flip", "-o", out,
              "-b", "fake", "--template", "flip-short")
    assert res.exit_code == 2 and "another input" in " ".join(res.output.split())
    results = json.loads((tmp_path / "rb2" / "results.json").read_text())
    assert results["meta"]["settings"]["flip"]["template"]["name"] == "flip-short"


def test_cli_rerank_resume_refuses_another_backend_model(tmp_path):
    bon, out = str(FIX / "bon_tiny.jsonl"), str(tmp_path / "bon")
    assert cli("rerank", bon, "--methods", "flip", "-o", out, "-b", "fake").exit_code == 0
    res = cli("rerank", bon, "--methods", "flip", "-o", out, "-b", "fake", "--max-tokens", "32")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "max_tokens: 512 -> 32" in text, text


# ---- 4. error records already in the output are counted, and the exit code says so ------------


def test_cli_rerun_counts_the_error_records_already_in_the_output(tmp_path):
    inp = jsonl(tmp_path / "in.jsonl", [PAIR, {"id": "bad", "instruction": "x"}])
    out = tmp_path / "out.jsonl"
    base = ["score", str(inp), "-o", str(out), "-b", "fake", "--no-cache"]
    assert cli(*base).exit_code == 1
    res = cli(*base)
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "errors (earlier runs, still in the output) │ 1" in text
    assert "--retry-errors" in text and "field 'response' is missing" in text


# ---- 5. the CLI's small gaps ---------------------------------------------------------------------


def test_cli_score_reads_stdin_and_resumes_it(tmp_path):
    out = tmp_path / "out.jsonl"
    body = json.dumps(PAIR) + "\n"
    res = cli("score", "-", "-o", str(out), "-b", "fake", "--no-cache", input=body)
    assert res.exit_code == 0, res.output
    assert records(out)[0]["id"] == "p" and records(out)[0]["reward"] is not None
    res = cli("score", "-", "-o", str(out), "-b", "fake", "--no-cache", input=body)
    assert res.exit_code == 0 and len(records(out)) == 1
    manifest = json.loads((tmp_path / "out.jsonl.fliprm.json").read_text())
    assert manifest["input"]["path"] == "-"


def test_cli_version():
    from fliprm import __version__

    res = cli("--version")
    assert res.exit_code == 0 and res.output.strip() == f"fliprm {__version__}"


def test_cli_extra_body_reaches_the_server_and_the_fingerprint(tmp_path):
    srv = OpenAIStandIn(lambda body: chat_reply('{"INFERRED INSTRUCTION": "x"}', usage=False))
    bodies = srv.bodies
    try:
        url = srv.url
        res = cli("score", "-i", "x", "-r", "y", "-b", "openai:m", "--base-url", url, "--no-cache",
                  "--extra-body", '{"chat_template_kwargs": {"enable_thinking": false}}')
    finally:
        srv.close()
    assert res.exit_code == 0, res.output
    assert bodies[-1]["chat_template_kwargs"] == {"enable_thinking": False}
    # a cached answer made with one extra body is never served for another
    off = RewardConfig(backend="openai:m", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    on = RewardConfig(backend="openai:m", extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert off.fingerprint() != on.fingerprint()
    res = cli("score", "-i", "x", "-r", "y", "-b", "fake", "--extra-body", "[1]")
    assert res.exit_code == 2 and "--extra-body must be a JSON object" in res.output


@pytest.mark.parametrize("args, message", [
    (["-b", "nope"], "unknown backend 'nope'"),
    (["--template", "nope"], "unknown template 'nope'"),
    (["--max-response-chars", "0"], "max_response_chars: must be >= 1"),
    (["--samples", "3"], "samples > 1 needs temperature > 0"),
    (["--exact", "-b", "fake"], "exact applies to the embedded model"),
])
def test_cli_bad_settings_are_one_line_errors(args, message):
    res = cli("score", "-i", "x", "-r", "y", *args)
    assert res.exit_code == 2 and message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_flip_reward_fake_spec_builds_the_scripted_backend():
    rm = FlipReward("fake")
    (r,) = rm.score(["Say hi."], ["Say hi."])
    assert r.error is None and r.parse_ok and rm.backend.name == "fake"


# ---- the configuration object itself -------------------------------------------------------------


def test_config_validates_once_with_field_names():
    with pytest.raises(ConfigError, match="max_response_chars: must be >= 1"):
        RewardConfig.preset(max_response_chars=0)
    with pytest.raises(ConfigError, match="unknown FlipReward option 'max_tokes'"):
        FlipReward("fake", max_tokes=3)


def test_fingerprint_covers_every_reward_field_and_no_runtime_field():
    base = RewardConfig(backend="openai:m")
    changes = {"model": "x", "method": "likelihood", "template": "flip", "max_tokens": 7,
               "temperature": 0.5, "seed": 3, "top_p": 0.9, "constrained": False,
               "max_response_chars": 100, "parse_failure": "error", "mask_echo": True,
               "infer": "system", "extra_body": {"a": 1}, "schema_mode": "off",
               "likelihood_mode": "forced", "n_ctx": 1024, "contextual_template": "flip-contextual"}
    untested = set(RewardConfig.model_fields) - set(changes) - {"backend", "samples", "exact",
                                                                  "similarity"}
    assert not untested, f"add a fingerprint case for {untested}"
    fps = {base.fingerprint()}
    for k, v in changes.items():
        fps.add(base.updated(**{k: v}).fingerprint())
    fps.add(RewardConfig(backend="embedded", exact=True).fingerprint())
    fps.add(RewardConfig(temperature=0.7, samples=3).fingerprint())
    assert len(fps) == len(changes) + 3
    # runtime options never change a fingerprint: they live in another object
    assert not set(RuntimeOptions.model_fields) & set(base.identity())


def test_presets_are_defined_once_and_valid():
    for name in PRESETS:
        RewardConfig.preset(name)
    assert RewardConfig.preset("rl").parse_failure == "error"
    assert RewardConfig.preset("paper").template == "flip"


def test_the_rl_default_is_pmi_with_the_echo_guard_on_every_rl_path(monkeypatch):
    """bench/README.md's shoot-out set it: pmi beat F1 on IFBench and focus4, and with the
    echo guard it held every copy attack at <= 0.10 at no IFBench cost. Adapters and the
    server start from the one preset, and an env var still switches the method."""
    from fliprm.integrations._common import FlipSettings

    rl = RewardConfig.preset("rl")
    assert (rl.method, rl.mask_echo) == ("pmi", True)
    monkeypatch.delenv("FLIPRM_METHOD", raising=False)
    assert FlipSettings.from_env().config == rl
    monkeypatch.setenv("FLIPRM_METHOD", "f1")
    assert FlipSettings.from_env().config.method == "f1"
    # the dry-run backend can teacher-force, so `-b fake` runs the RL default end to end
    rm = FlipReward("fake", config=rl)
    own, other = rm.score(["Say hello to Bob"] * 2, ["Hello Bob, nice to meet you!", "Paris is big."])
    assert own.error is None and own.reward > other.reward
