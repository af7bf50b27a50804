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
    (r,) = FlipReward(fb, method="f1", parse_failure=policy, max_tokens=64).score(
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
    rm = FlipReward(fb, method="f1", cache=ResponseCache(":memory:"))
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
                        (["--no-mask-echo"], "mask_echo: true -> false")):
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
        # the stand-in gives no log-probabilities: the F1 method, named
        res = cli("score", "-i", "x", "-r", "y", "-b", "openai:m", "--base-url", url, "--no-cache",
                  "--method", "f1", "--extra-body", '{"chat_template_kwargs": {"enable_thinking": false}}')
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
    (["--samples", "3", "--method", "f1"], "samples > 1 needs temperature > 0"),
    (["--samples", "3"], "samples > 1 applies to method='f1'"),
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


# ---- one default reward for every entry point (issue 20) -----------------------------------------


@pytest.fixture
def built(monkeypatch):
    """The configs of every FlipReward built during the test: whichever door a user comes
    through, this is the reward they get. Env settings that would pick another are cleared."""
    for var in ("FLIPRM_METHOD", "FLIPRM_MASK_ECHO", "FLIPRM_PRESET", "FLIPRM_EXPLAIN"):
        monkeypatch.delenv(var, raising=False)
    seen: list[RewardConfig] = []
    init = FlipReward.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.config)

    monkeypatch.setattr(FlipReward, "__init__", spy)
    return seen


def _is_default(config: RewardConfig) -> bool:
    return (config.method, config.mask_echo) == ("pmi", True)


def test_the_one_default_is_pmi_with_the_echo_guard():
    """bench/README.md's shoot-out set it: pmi beat F1 on IFBench and focus4, and with the
    echo guard it held every copy attack at <= 0.10 at no IFBench cost."""
    assert _is_default(RewardConfig())
    assert RewardConfig.preset("default") == RewardConfig()
    rl = RewardConfig.preset("rl")
    # rl differs only in how a trainer wants failures and long inputs handled
    assert rl == RewardConfig(max_response_chars=8000, parse_failure="error", max_tokens=256)
    paper = RewardConfig.preset("paper")
    assert (paper.method, paper.mask_echo, paper.template, paper.constrained,
            paper.parse_failure) == ("f1", False, "flip", False, "raw")


def test_flip_reward_starts_from_the_default(built):
    rm = FlipReward("fake")
    assert _is_default(rm.config) and rm.config == RewardConfig(backend="fake")
    own, other = rm.score(["Say hello to Bob"] * 2, ["Hello Bob, nice to meet you!", "Paris is big."])
    assert own.method == "pmi" and own.error is None and own.reward > other.reward


def test_cli_score_starts_from_the_default_and_flags_change_it(built, tmp_path):
    inp = jsonl(tmp_path / "in.jsonl", [PAIR])
    for extra, method, guard in (([], "pmi", True), (["--method", "f1"], "f1", True),
                                 (["--preset", "paper"], "f1", False)):
        out = tmp_path / f"out{len(built)}.jsonl"
        res = cli("score", str(inp), "-o", str(out), "-b", "fake", "--no-cache", *extra)
        assert res.exit_code == 0, res.output
        assert (built[-1].method, built[-1].mask_echo) == (method, guard), extra
        assert records(out)[0]["method"] == method
    assert built[-1] == RewardConfig.preset("paper", backend="fake")


def test_cli_demo_eval_rerank_start_from_the_default(built, tmp_path):
    res = cli("demo", "-b", "fake")
    assert res.exit_code == 0, res.output
    assert built and all(_is_default(c) and c.explain for c in built)
    # eval and rerank name the method in each judge (flip = F1, flip-pmi, flip-likelihood);
    # every flip judge starts from the default's other settings (the echo guard on)
    built.clear()
    res = cli("eval", "rewardbench2", "--data", str(FIX / "rb2_tiny.jsonl"),
              "--methods", "flip,flip-pmi", "-o", str(tmp_path / "rb2"), "-b", "fake")
    assert res.exit_code == 0, res.output
    assert {c.method for c in built} == {"f1", "pmi"} and all(c.mask_echo for c in built)
    meta = json.loads((tmp_path / "rb2" / "results.json").read_text())["meta"]["settings"]
    assert (meta["flip-pmi"]["method"], meta["flip-pmi"]["mask_echo"]) == ("pmi", True)
    assert (meta["flip"]["method"], meta["flip"]["mask_echo"]) == ("f1", True)
    built.clear()
    res = cli("rerank", str(FIX / "bon_tiny.jsonl"), "--methods", "flip,flip-pmi",
              "-o", str(tmp_path / "bon"), "-b", "fake")
    assert res.exit_code == 0, res.output
    assert {c.method for c in built} == {"f1", "pmi"} and all(c.mask_echo for c in built)
    built.clear()
    res = cli("rerank", str(FIX / "bon_tiny.jsonl"), "--methods", "flip-pmi", "--preset",
              "paper", "-o", str(tmp_path / "bon-paper"), "-b", "fake")
    assert res.exit_code == 0, res.output
    assert {(c.method, c.mask_echo, c.template) for c in built} == {("pmi", False, "flip")}


def test_cli_serve_starts_from_the_default(built, monkeypatch):
    from helpers_fliprm import served_reward

    res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache"], {})
    assert res.exit_code == 0, res.output
    assert _is_default(rm.config) and rm.config == RewardConfig.preset("rl", backend="fake")
    res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache", "--method", "f1"], {})
    assert res.exit_code == 0 and (rm.config.method, rm.config.mask_echo) == ("f1", True)
    res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache", "--preset", "paper"], {})
    assert res.exit_code == 0 and rm.config == RewardConfig.preset("paper", backend="fake")


async def test_every_adapter_starts_from_the_default(built, monkeypatch):
    """Adapters and the server start from the one preset, and an env var still switches the
    method."""
    import fliprm.integrations._common as common
    from fliprm.integrations import set_reward
    from fliprm.integrations._common import FlipSettings
    from fliprm.integrations.open_instruct import FlipVerifier
    from fliprm.integrations.openrlhf import reward_func
    from fliprm.integrations.trl import get_flip_reward
    from fliprm.integrations.verl import compute_score

    set_reward(None)
    monkeypatch.setattr(common, "_scorers", {})  # every adapter builds its own reward here
    monkeypatch.setenv("FLIPRM_BACKEND", "fake")
    rl = RewardConfig.preset("rl", backend="fake")
    assert FlipSettings.from_env().config == rl
    assert get_flip_reward().settings.config == rl
    own, other = await get_flip_reward()(prompts=["Say hello to Bob"] * 2,
                                         completions=["Hello Bob, nice to meet you!", "Paris."])
    assert own > other
    out = await compute_score("src", "Hello Bob!", "Say hello to Bob")
    assert out["flip_method"] == "pmi"
    payload = reward_func(["<p>Hello Bob!"], ["<p>"], ["Say hello to Bob"])
    assert payload["extra_info"]["flip_method"] == ["pmi"]
    verdict = await FlipVerifier().async_call([], "Hello Bob!", "Say hello to Bob")
    assert verdict.reasoning.startswith("pmi")
    assert built and all(c == rl for c in built)
    monkeypatch.setenv("FLIPRM_METHOD", "f1")
    assert FlipSettings.from_env().config.method == "f1"
    monkeypatch.setenv("FLIPRM_PRESET", "paper")
    monkeypatch.delenv("FLIPRM_METHOD")
    assert FlipSettings.from_env().config == RewardConfig.preset("paper", backend="fake")


def test_ray_starts_from_the_default(monkeypatch, tmp_path):
    import fliprm.scale._ray as ray_scale

    pytest.importorskip("ray")
    seen: list[RewardConfig] = []

    class Built(Exception):
        pass

    def reward(*args, config=None, **kwargs):  # stops before a model would be built
        seen.append(config)
        raise Built

    monkeypatch.setattr(ray_scale, "FlipReward", reward)
    with pytest.raises(Built):
        ray_scale.FlipBatchScorer()
    with pytest.raises(Built):
        ray_scale.score_file_ray(jsonl(tmp_path / "in.jsonl", [PAIR]), tmp_path / "out")
    assert seen == [RewardConfig(), RewardConfig()] and _is_default(seen[0])
