"""Issue 21: a client whose settings differ from its server's refuses at the first call, and
what the adapters log is named after what it is (no F1 parts under pmi, no "None" reasons).
Issue 20: an inferred instruction in a result reaches every adapter's extras."""

from __future__ import annotations

import math

import pytest

from fliprm import FlipReward
from fliprm._types import Completion
from fliprm.config import RewardConfig
from fliprm.errors import ConfigError
from fliprm.integrations import set_reward
from fliprm.server import ServerThread, create_app
from helpers_fliprm import FliprmStandIn, shown_response

INSTR = "Name the capital of France."
PMI = 2.0  # the scripted judge: log p(x|y) = -1, log p(x|empty) = -3 per token
PMI_REWARD = 1 / (1 + math.exp(-PMI))


def forced_reply(req):
    """Teacher-forced log-probs: -1 per token given a response, -3 given the empty one."""
    lp = -3.0 if shown_response(req) == "" else -1.0
    toks = [(ch, lp) for ch in req.forced_text] + [(ch, -9.0) for ch in req.forced_suffix]
    return Completion(text=req.forced_text + req.forced_suffix, token_logprobs=toks)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in ("FLIPRM_SERVER_URL", "FLIPRM_METHOD", "FLIPRM_PRESET", "FLIPRM_MAX_TOKENS"):
        monkeypatch.delenv(k, raising=False)
    set_reward(None)
    yield
    set_reward(None)


@pytest.fixture
def pmi_server():
    """A real fliprm server with the RL default (pmi + echo guard) over the dry-run backend."""
    rm = FlipReward("fake", config=RewardConfig.preset("rl", backend="fake"))
    srv = ServerThread(create_app(rm)).start()
    yield srv
    srv.stop()


class TestClientAndServerAgree:
    async def test_f1_client_refuses_a_pmi_server_at_the_first_call(self, pmi_server):
        from fliprm.integrations.trl import get_flip_reward

        reward = get_flip_reward(server_url=pmi_server.url, method="f1")
        with pytest.raises(ConfigError, match=r'method: "pmi" -> "f1"') as exc:
            await reward(prompts=[INSTR], completions=["Paris."])
        assert "\n" not in str(exc.value) and pmi_server.url in str(exc.value)

    async def test_env_method_on_the_client_is_checked_too(self, pmi_server, monkeypatch):
        from fliprm.integrations.verl import compute_score

        monkeypatch.setenv("FLIPRM_METHOD", "f1")
        with pytest.raises(ConfigError, match="method"):
            await compute_score("src", "Paris.", INSTR, server_url=pmi_server.url)

    async def test_every_explicit_setting_is_compared(self, pmi_server):
        from fliprm.integrations._common import FlipSettings
        from fliprm.integrations.openrlhf import ascore_openrlhf

        s = FlipSettings.from_env(server_url=pmi_server.url, method="pmi", max_tokens=64)
        with pytest.raises(ConfigError, match=r"max_tokens: 256 -> 64"):
            await ascore_openrlhf(["Paris."], [""], [INSTR], s)

    async def test_a_preset_asked_for_by_name_is_compared(self, pmi_server, monkeypatch):
        from fliprm.integrations.trl import get_flip_reward

        monkeypatch.setenv("FLIPRM_PRESET", "paper")
        with pytest.raises(ConfigError, match=r'method: "pmi" -> "f1".*template\.name'):
            await get_flip_reward(server_url=pmi_server.url)(prompts=[INSTR],
                                                             completions=["Paris."])

    async def test_agreeing_settings_score(self, pmi_server):
        from fliprm.integrations.trl import get_flip_reward

        reward = get_flip_reward(server_url=pmi_server.url, method="pmi", max_tokens=256)
        got = await reward(prompts=[INSTR, INSTR], completions=["Paris.", "Lyon."])
        assert len(got) == 2 and all(isinstance(g, float) for g in got)

    async def test_a_server_that_hides_its_settings_is_refused(self):
        from fliprm.integrations.trl import get_flip_reward

        srv = FliprmStandIn(lambda body: {"results": []}, health={"status": "ok"})
        try:
            with pytest.raises(ConfigError, match="does not report its settings"):
                await get_flip_reward(server_url=srv.url, method="pmi")(
                    prompts=[INSTR], completions=["Paris."])
        finally:
            srv.close()


class TestLogsNameWhatTheyHold:
    async def test_verl_under_pmi_logs_pmi_numbers_and_no_f1_parts(self, fake_reward):
        from fliprm.integrations.verl import acompute_score_batch

        fake_reward(forced_reply, method="pmi")
        ok, empty = await acompute_score_batch(["s", "s"], ["Paris.", " "], [INSTR, INSTR], None,
                                               method="pmi")
        assert set(ok) == set(empty) == {"score", "flip_reward", "flip_failed", "flip_method",
                                         "flip_pmi", "flip_logprob", "flip_inferred_instruction"}
        assert ok["score"] == ok["flip_reward"] == pytest.approx(PMI_REWARD)
        assert ok["flip_pmi"] == pytest.approx(PMI) and ok["flip_logprob"] == pytest.approx(-1.0)
        assert (ok["flip_method"], ok["flip_failed"], ok["flip_inferred_instruction"]) == (
            "pmi", 0.0, "")
        assert (empty["score"], empty["flip_failed"]) == (0.0, 0.0)

    async def test_verl_under_f1_logs_precision_and_recall(self, fake_reward):
        from fliprm.integrations.verl import compute_score

        fake_reward(method="f1")
        out = await compute_score("s", "Paris.", INSTR, method="f1")
        assert {k for k in out if k.startswith("flip_")} == {
            "flip_reward", "flip_failed", "flip_method", "flip_precision", "flip_recall",
            "flip_parse_ok", "flip_inferred_instruction"}
        assert (out["flip_precision"], out["flip_recall"], out["flip_method"]) == (1.0, 1.0, "f1")

    async def test_openrlhf_under_pmi(self, fake_reward):
        from fliprm.integrations._common import FlipSettings
        from fliprm.integrations.openrlhf import ascore_openrlhf, rewards_payload

        fake_reward(forced_reply, method="pmi")
        s = FlipSettings.from_env(method="pmi")
        out = rewards_payload(await ascore_openrlhf(["Paris."], [""], [INSTR], s), 0.0, "pmi")
        assert set(out["extra_logs"]) == {"flip_failed", "flip_pmi", "flip_logprob"}
        assert out["rewards"] == out["scores"] == [pytest.approx(PMI_REWARD)]
        assert out["extra_info"]["flip_method"] == ["pmi"]

    async def test_open_instruct_reasoning_under_pmi_names_the_method(self, fake_reward):
        from fliprm.integrations.open_instruct import FlipVerifier, FlipVerifierConfig

        fake_reward(forced_reply, method="pmi")
        res = await FlipVerifier(FlipVerifierConfig(flip_method="pmi")).async_call(
            [], "Paris.", INSTR)
        assert res.score == pytest.approx(PMI_REWARD)
        assert res.reasoning == f"pmi reward {PMI_REWARD:.4f}"
        empty = await FlipVerifier(FlipVerifierConfig(flip_method="pmi")).async_call([], "", INSTR)
        assert empty.reasoning == "pmi reward 0.0000; empty response"


def explained_reply(body):
    """A pmi server with explanations on: each result carries the generated instruction."""
    return {"fingerprint": "f" * 16, "results": [
        {"index": i, "id": it.get("id"), "reward": 0.75, "method": "pmi", "logprob": -1.0,
         "extra": {"pmi": 1.1}, "inferred_instruction": f"Explain {it['response']}"}
        for i, it in enumerate(body["items"])]}


class TestInferredInstructionReachesEveryAdapter:
    @pytest.fixture
    def server(self):
        health = {"fingerprint": "f" * 16, "settings": RewardConfig.preset("rl").identity()}
        srv = FliprmStandIn(explained_reply, health=health)
        yield srv.url
        srv.close()

    async def test_trl_completions_table_column(self, server):
        from fliprm.integrations.trl import get_flip_reward

        logged = {}
        got = await get_flip_reward(server_url=server, method="pmi")(
            prompts=[INSTR, INSTR], completions=["a", ""],
            log_extra=lambda k, v: logged.setdefault(k, v))
        assert got == [0.75, 0.0]
        assert logged == {"flip_inferred_instruction": ["Explain a", ""]}

    async def test_verl_extras(self, server):
        from fliprm.integrations.verl import compute_score

        out = await compute_score("s", "a", INSTR, server_url=server, method="pmi")
        assert out["flip_inferred_instruction"] == "Explain a" and out["flip_pmi"] == 1.1

    def test_openrlhf_extra_info(self, server):
        from fliprm.integrations.openrlhf import reward_func

        out = reward_func(["Q: a<|im_end|>"], ["Q: "], [INSTR], server_url=server, method="pmi")
        assert out["extra_info"]["flip_inferred_instruction"] == ["Explain a"]

    async def test_open_instruct_reasoning(self, server):
        from fliprm.integrations.open_instruct import FlipVerifier, FlipVerifierConfig

        v = FlipVerifier(FlipVerifierConfig(flip_server_url=server, flip_method="pmi"))
        res = await v.async_call([], "a", INSTR)
        assert res.reasoning == "pmi reward 0.7500; inferred instruction: Explain a"
