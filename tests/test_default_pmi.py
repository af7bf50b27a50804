"""The pmi default's two companions (issue 20): a backend without log-probabilities is one error
at start naming ``--method f1``, and ``explain=True`` puts the FLIP generation (the inferred
instruction) beside a likelihood/pmi reward without ever changing the reward."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fliprm import Completion, FlipReward
from fliprm._types import GenerateRequest
from fliprm.backends.fake import FakeBackend
from fliprm.cli.main import _register, app
from fliprm.errors import ConfigError
from helpers_fliprm import OpenAIStandIn, chat_reply

INSTR = "Name the capital of France."
RESP = "The capital of France is Paris."
OTHER = "Write a haiku about autumn leaves."
FLIP_REPLY = json.dumps({"REASONING": "It names a capital.", "INFERRED INSTRUCTION": INSTR})


def cli(*args: str):
    _register()
    return CliRunner().invoke(app, list(args))


def scripted(flip_reply: str = FLIP_REPLY):
    """Forced decoding: every forced word costs -0.5 nat when the prompt mentions Paris (the
    response is there) and -2.0 when it does not (the empty-response baseline), so the pmi is
    exactly 1.5; a generation is answered with ``flip_reply``."""

    def reply(req: GenerateRequest) -> Completion | str:
        if req.forced_text is None:
            return flip_reply
        lp = -0.5 if "Paris" in req.messages[-1]["content"] else -2.0
        words = [w for w in req.forced_text.replace(" ", " \0").split("\0") if w]
        toks = [(w, lp) for w in words] + [(req.forced_suffix, -0.1)]
        return Completion(text=req.forced_text + req.forced_suffix, token_logprobs=toks)

    return reply


PMI_REWARD = 1.0 / (1.0 + math.exp(-1.5))


# ---- explain ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pmi", "likelihood"])
def test_explain_adds_the_inferred_instruction_and_keeps_the_reward(method):
    plain = FlipReward(FakeBackend(scripted()), method=method)
    explained = FlipReward(FakeBackend(scripted()), method=method, explain=True)
    (a,) = plain.score([INSTR], [RESP])
    (b,) = explained.score([INSTR], [RESP])
    expected = PMI_REWARD if method == "pmi" else math.exp(-0.5)
    assert a.reward == pytest.approx(expected, abs=1e-12) and b.reward == a.reward
    assert a.inferred_instruction is None and "inferred_f1" not in a.extra
    assert b.inferred_instruction == INSTR and b.reasoning == "It names a capital."
    assert b.extra["inferred_f1"] == 1.0 and "explain_error" not in b.extra
    assert b.method == method and b.error is None
    # the generation cost is counted: one more model call than without explain
    assert len(explained.backend.calls) == len(plain.backend.calls) + 1


def test_explain_f1_is_against_the_instruction_scored():
    rm = FlipReward(FakeBackend(scripted()), explain=True)
    own, other = rm.score([INSTR, OTHER], [RESP, RESP])
    assert own.inferred_instruction == other.inferred_instruction == INSTR
    assert own.extra["inferred_f1"] == 1.0 and other.extra["inferred_f1"] == 0.0


@pytest.mark.parametrize("policy", ["raw", "zero", "error"])
def test_an_unparsed_explanation_leaves_the_reward_and_says_why(policy):
    rm = FlipReward(FakeBackend(scripted("no JSON here")), explain=True, parse_failure=policy)
    (r,) = rm.score([INSTR], [RESP])
    assert r.reward == pytest.approx(PMI_REWARD, abs=1e-12) and r.error is None
    assert r.inferred_instruction is None and "inferred_f1" not in r.extra
    assert r.extra["explain_error"]


def test_a_failed_explanation_call_leaves_the_reward():
    from fliprm.errors import BadResponse

    def reply(req):
        return BadResponse("boom") if req.forced_text is None else scripted()(req)

    (r,) = FlipReward(FakeBackend(reply), explain=True, max_retries=0).score([INSTR], [RESP])
    assert r.reward == pytest.approx(PMI_REWARD, abs=1e-12) and r.error is None
    assert "boom" in r.extra["explain_error"]


def test_cli_score_explain_writes_the_inferred_instruction(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "instruction": INSTR, "response": RESP}) + "\n")
    rows = {}
    for flag in ("", "--explain"):
        out = tmp_path / f"out{flag}.jsonl"
        res = cli("score", str(inp), "-o", str(out), "-b", "fake", "--no-cache",
                  *([flag] if flag else []))
        assert res.exit_code == 0, res.output
        rows[flag] = json.loads(out.read_text().splitlines()[0])
    assert rows["--explain"]["method"] == "pmi"
    assert rows["--explain"]["reward"] == rows[""]["reward"] is not None
    # the scripted dry run infers the last words of the prompt it is shown
    assert rows["--explain"]["inferred_instruction"] and not rows[""]["inferred_instruction"]
    assert "inferred_f1" in rows["--explain"]["extra"]


def test_serve_results_carry_the_explanation():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fliprm.server import create_app

    rm = FlipReward(FakeBackend(scripted()), explain=True)
    with TestClient(create_app(rm)) as client:
        resp = client.post("/v1/score", json={"items": [
            {"instruction": INSTR, "response": RESP, "id": "own"},
            {"instruction": OTHER, "response": RESP, "id": "other"}]})
    assert resp.status_code == 200, resp.text
    own, other = resp.json()["results"]
    assert (own["id"], own["method"]) == ("own", "pmi")
    assert own["reward"] == pytest.approx(PMI_REWARD, abs=1e-12)
    assert own["inferred_instruction"] == other["inferred_instruction"] == INSTR
    assert own["extra"]["inferred_f1"] == 1.0 and other["extra"]["inferred_f1"] == 0.0


async def test_trl_logs_the_inferred_instruction_when_the_reward_explains():
    from fliprm.integrations import set_reward
    from fliprm.integrations.trl import flip_reward

    logged: dict = {}
    set_reward(FlipReward(FakeBackend(scripted()), explain=True, max_retries=0))
    try:
        rewards = await flip_reward(prompts=[INSTR], completions=[RESP],
                                    log_extra=lambda k, v: logged.setdefault(k, v))
    finally:
        set_reward(None)
    assert rewards == [pytest.approx(PMI_REWARD, abs=1e-12)]
    assert logged == {"flip_inferred_instruction": [INSTR]}


async def test_verl_and_openrlhf_carry_the_inferred_instruction_when_the_reward_explains():
    from fliprm.integrations import set_reward
    from fliprm.integrations._common import FlipSettings
    from fliprm.integrations.openrlhf import ascore_openrlhf, rewards_payload
    from fliprm.integrations.verl import compute_score

    set_reward(FlipReward(FakeBackend(scripted()), explain=True, max_retries=0))
    try:
        out = await compute_score("src", RESP, INSTR)
        results = await ascore_openrlhf(["<p>" + RESP], ["<p>"], [INSTR], FlipSettings.from_env())
    finally:
        set_reward(None)
    assert out["flip_inferred_instruction"] == INSTR and out["flip_method"] == "pmi"
    assert out["score"] == pytest.approx(PMI_REWARD, abs=1e-12)
    payload = rewards_payload(results, 0.0, "pmi")
    assert payload["extra_info"]["flip_inferred_instruction"] == [INSTR]


async def test_trl_logs_the_inferred_instruction_from_an_explaining_server():
    pytest.importorskip("fastapi")
    from fliprm.integrations.trl import get_flip_reward
    from fliprm.server import ServerThread, create_app

    srv = ServerThread(create_app(FlipReward(FakeBackend(scripted()), explain=True))).start()
    logged: dict = {}
    try:
        rewards = await get_flip_reward(server_url=srv.url)(
            prompts=[INSTR], completions=[RESP], log_extra=lambda k, v: logged.setdefault(k, v))
    finally:
        srv.stop()
    assert rewards == [pytest.approx(PMI_REWARD, abs=1e-12)]
    assert logged == {"flip_inferred_instruction": [INSTR]}


# ---- a backend without log-probabilities ---------------------------------------------------------


def test_score_on_a_server_without_logprobs_is_one_error_naming_method_f1(tmp_path):
    """A generic OpenAI-compatible server (its /v1/models names no llama.cpp or vLLM) cannot
    teacher-force: the pmi default stops at start, and --method f1 scores."""
    srv = OpenAIStandIn(lambda body: chat_reply(FLIP_REPLY), models={"data": []})
    try:
        inp = tmp_path / "in.jsonl"
        inp.write_text(json.dumps({"instruction": INSTR, "response": RESP}) + "\n")
        base = ["-b", "openai:m", "--base-url", srv.url, "--no-cache"]
        for args in (["-i", INSTR, "-r", RESP], [str(inp), "-o", str(tmp_path / "o.jsonl")]):
            res = cli("score", *args, *base)
            assert res.exit_code == 2, res.output
            lines = [x for x in res.output.splitlines() if x.strip()]
            assert len(lines) == 1 and "--method f1" in lines[0], res.output
            assert "Traceback" not in res.output
        assert srv.bodies == []  # refused before any generation
        res = cli("score", str(inp), "-o", str(tmp_path / "f1.jsonl"), *base, "--method", "f1")
        assert res.exit_code == 0, res.output
        row = json.loads((tmp_path / "f1.jsonl").read_text())
        assert (row["method"], row["reward"], row["inferred_instruction"]) == ("f1", 1.0, INSTR)
    finally:
        srv.close()


def test_flip_reward_refuses_a_backend_without_logprobs_at_start():
    class NoLogprobs(FakeBackend):
        supports_forced_decoding = False

    with pytest.raises(ConfigError, match="method='pmi' .*use --method f1"):
        FlipReward(NoLogprobs(scripted()))
    rm = FlipReward(NoLogprobs(scripted()), method="f1")
    assert rm.score([INSTR], [RESP])[0].reward == 1.0



def test_demo_shows_why_an_explanation_is_missing(monkeypatch):
    from fliprm.backends import fake

    def reply(req):
        return fake._scripted_forcing(req, req.messages[-1]["content"]) if req.forced_text \
            else "no JSON here"

    monkeypatch.setattr(fake, "scripted_reply", reply)
    _register()
    res = CliRunner().invoke(app, ["demo", "-b", "fake"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    # every reward stands; the cell for the inferred instruction says why there is none
    assert text.count("(no inferred instruction: ") == 6, res.output


def test_serve_on_a_server_without_logprobs_stops_at_start_naming_method_f1(monkeypatch):
    """The RL path: `fliprm serve` over a generic OpenAI-compatible judge refuses to start
    (exit 2, one line) instead of serving an error for every item."""
    from helpers_fliprm import served_reward

    srv = OpenAIStandIn(lambda body: chat_reply(FLIP_REPLY), models={"data": []})
    try:
        args = ["-b", "openai:m", "--base-url", srv.url, "--no-cache"]
        res, rm = served_reward(monkeypatch, args, {})
        assert res.exit_code == 2 and rm is None, res.output
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert len(lines) == 1 and "--method f1" in lines[0], res.output
        res, rm = served_reward(monkeypatch, [*args, "--method", "f1"], {})
        assert res.exit_code == 0 and rm.config.method == "f1", res.output
    finally:
        srv.close()


def test_serve_starts_while_its_judge_server_is_still_down(monkeypatch):
    """An upstream that cannot be reached yet (a vLLM still loading) is not a start error:
    /health and each item say so until it is up, as before."""
    from helpers_fliprm import served_reward

    res, rm = served_reward(monkeypatch, ["-b", "openai:m", "--base-url",
                                           "http://127.0.0.1:9/v1", "--no-cache"], {})
    assert res.exit_code == 0 and rm is not None, res.output
