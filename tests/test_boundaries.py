"""Nothing silent at the boundaries (issue 21): every network call ends within its deadline, an
HTTP judge is identified by what its server says it serves, and credentials in a URL never
reach an error, an output file, a fingerprint or the console.

Stand-in servers run on 127.0.0.1 (tests/helpers_fliprm.py); deadlines are small (1-2 s) and
each test bounds itself, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fliprm import FlipReward
from fliprm.backends.openai import OpenAIBackend
from fliprm.batch import score_file
from fliprm.config import RuntimeOptions
from fliprm.errors import ConfigError
from fliprm.integrations._common import ServerScorer
from helpers_fliprm import OpenAIStandIn, SlowServer, chat_reply

FIX = Path(__file__).parent / "fixtures" / "vllm"
SECRET = "s3cretPASS"
GUARD_S = 10.0  # a regression fails at this bound instead of hanging


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(coro):
    """(result, seconds) of ``coro``, failing the test if it runs past GUARD_S."""
    t0 = time.monotonic()
    try:
        out = asyncio.run(asyncio.wait_for(coro, GUARD_S))
    except TimeoutError:
        pytest.fail(f"still running after {GUARD_S:g}s: no total deadline")
    return out, time.monotonic() - t0


def _flip(instruction: str) -> dict:
    return chat_reply(json.dumps({"INFERRED INSTRUCTION": instruction}))


# ---- calls that never end ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["trickle", "hang"])
def test_an_openai_call_ends_within_its_timeout_against_a_slow_server(mode):
    srv = SlowServer(mode)
    try:
        rm = FlipReward(OpenAIBackend(base_url=srv.url, model="m", timeout=1.5),
                        method="f1", max_retries=0)
        (res,), took = _timed(rm.ascore(["Say hi."], ["Hi!"]))
    finally:
        srv.close()
    assert res.reward is None and "BackendTimeout" in res.error, res.error
    assert took <= 1.5 * 1.1, took


def test_the_default_total_timeout_is_finite_and_bounds_the_retries():
    assert RuntimeOptions(timeout=1.0, max_retries=2).deadline_s == pytest.approx(
        3 * 1.0 + 0.75 + 1.5)
    srv = SlowServer("hang")
    try:
        rm = FlipReward(OpenAIBackend(base_url=srv.url, model="m", timeout=0.5),
                        method="f1", timeout=0.5, max_retries=2)
        assert rm.engine.total_timeout == RuntimeOptions(timeout=0.5, max_retries=2).deadline_s
        rm.engine.total_timeout = 1.2  # smaller than the attempts need: the deadline wins
        (res,), took = _timed(rm.ascore(["Say hi."], ["Hi!"]))
    finally:
        srv.close()
    # asking /models, one attempt, then no time left for a pause and another: it gives up
    assert res.reward is None and "BackendTimeout" in res.error, res.error
    assert took <= 1.2 * 1.1, took


@pytest.mark.parametrize("mode", ["trickle", "hang", "busy"])
def test_the_adapters_server_client_ends_within_its_timeout(mode):
    srv = SlowServer(mode)
    try:
        scorer = ServerScorer(srv.root, timeout=1.5)
        res, took = _timed(scorer.ascore(["Say hi.", "Say yes."], ["Hi!", "Yes!"]))
    finally:
        srv.close()
    assert [r.reward for r in res] == [None, None] and all(r.error for r in res)
    assert took <= 1.5 * 1.1, (mode, took)
    if mode == "busy":
        assert "503" in res[0].error, res[0].error


@pytest.mark.parametrize("mode", ["trickle", "hang"])
def test_the_embedded_backends_own_http_calls_have_a_total_deadline(tmp_path, mode):
    from fliprm._types import GenerateRequest
    from fliprm.backends.embedded import EmbeddedBackend
    from fliprm.errors import BackendError

    srv = SlowServer(mode)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    backend = EmbeddedBackend(gguf, http_timeout=1.5, api_key="")

    class Loaded:  # the llama.cpp runtime, as far as the forcing path needs it
        listening_address = srv.root

    backend._server = Loaded()
    req = GenerateRequest(messages=({"role": "user", "content": "Hi!"},),
                          forced_text="Say hi.")
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="1.5s"):
            asyncio.run(asyncio.wait_for(backend.generate(req), GUARD_S))
        took = time.monotonic() - t0
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="1.5s"):
            backend.count_tokens("Hi!")
        took_count = time.monotonic() - t0
    finally:
        srv.close()
    # the deadline is total: without it the trickle runs to GUARD_S (10 s); 0.5 s of slack
    # for a loaded machine (a CI run under two model jobs measured 1.67 s)
    assert took <= 1.5 + 0.5 and took_count <= 1.5 + 0.5, (took, took_count)


# ---- identity of an HTTP judge -------------------------------------------------------------------


def _vllm_models(root: str) -> dict:
    models = json.loads((FIX / "models.json").read_text())
    models["data"][0]["root"] = root
    return models


def test_a_vllm_judges_identity_is_what_the_server_serves():
    a = OpenAIStandIn(lambda b: _flip("x"), models=_vllm_models("/models/a"))
    try:
        backend = OpenAIBackend(base_url=a.url, model="qwen05")
        info = asyncio.run(backend.identify())
        first_id, first_key = backend.model_id, dict(backend.cache_identity)
        a.models = _vllm_models("/models/b")  # another model under the same served name
        other = OpenAIBackend(base_url=a.url, model="qwen05")
        asyncio.run(other.identify())
    finally:
        a.close()
    assert info == {"root": "/models/a", "max_model_len": 4096}
    assert first_id.startswith("qwen05@") and other.model_id.startswith("qwen05@")
    assert first_id != other.model_id and first_key != other.cache_identity


def test_a_llamacpp_judges_identity_is_its_model_path_and_hash():
    models = {"object": "list", "data": [{"id": "m", "owned_by": "llamacpp",
                                          "meta": {"n_params": 494032768, "size": 988064}}]}
    srv = OpenAIStandIn(lambda b: _flip("x"), models=models,
                        gets={"/props": {"model_path": "/m/a.gguf", "total_slots": 1}})
    try:
        a = OpenAIBackend(base_url=srv.url, model="m")
        info = asyncio.run(a.identify())
        srv.gets["/props"] = {"model_path": "/m/a.gguf", "model_sha256": "ab" * 32}
        b = OpenAIBackend(base_url=srv.url, model="m")
        asyncio.run(b.identify())
    finally:
        srv.close()
    assert info == {"meta": {"n_params": 494032768, "size": 988064}, "model_path": "/m/a.gguf"}
    assert a.model_id != b.model_id


def test_a_model_swapped_under_the_same_name_is_not_served_from_the_cache(tmp_path):
    answer = {"instr": "Name the capital of France."}
    srv = OpenAIStandIn(lambda b: _flip(answer["instr"]), models=_vllm_models("/models/a"))
    cache = tmp_path / "cache.sqlite"
    try:
        def score():
            rm = FlipReward(OpenAIBackend(base_url=srv.url, model="qwen05"), method="f1",
                            cache=cache)
            (res,) = rm.score(["Name the capital of France."], ["Paris."])
            rm.close()
            return res

        first = score()
        srv.models = _vllm_models("/models/b")
        answer["instr"] = "Write a poem."
        second = score()
    finally:
        srv.close()
    assert first.reward == 1.0 and not first.cached
    assert not second.cached and second.reward == 0.0 and second.model != first.model


def test_a_resume_on_a_swapped_model_is_refused_as_a_settings_change(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": "Say hi.", "response": "Hi!"}) + "\n")
    out = tmp_path / "out.jsonl"
    srv = OpenAIStandIn(lambda b: _flip("Say hi."), models=_vllm_models("/models/a"))
    try:
        def run():
            rm = FlipReward(OpenAIBackend(base_url=srv.url, model="qwen05"), method="f1")
            try:
                return asyncio.run(score_file(rm, inp, out))
            finally:
                rm.close()

        assert run().errors == 0
        assert run().skipped == 1  # same server, same model: resumes
        srv.models = _vllm_models("/models/b")
        with pytest.raises(ConfigError, match="model_id"):
            run()
    finally:
        srv.close()


def test_a_ray_run_on_a_swapped_model_is_refused_as_a_settings_change(tmp_path):
    pytest.importorskip("ray")
    from fliprm.config import RewardConfig
    from fliprm.scale import score_file_ray

    inp = tmp_path / "in.jsonl"
    inp.write_text("\n")  # no rows: the plan is checked and written, no Ray is started
    srv = OpenAIStandIn(lambda b: _flip("x"), models=_vllm_models("/models/a"))
    try:
        config = RewardConfig(backend="openai:qwen05", method="f1")
        runtime = RuntimeOptions(base_url=srv.url)
        run = lambda: score_file_ray(inp, tmp_path / "out", config=config,
                                     runtime=runtime, progress=False)
        run()
        run()  # same model: resumes
        srv.models = _vllm_models("/models/b")
        with pytest.raises(ConfigError, match="model_id"):
            run()
    finally:
        srv.close()


# ---- leaks ---------------------------------------------------------------------------------------


def test_redact_url():
    from fliprm._net import redact, redact_url

    assert redact_url(f"http://bob:{SECRET}@h:8000/v1") == "http://bob:***@h:8000/v1"
    assert redact_url(f"https://{SECRET}@h/v1") == "https://***@h/v1"
    assert redact_url("http://h:8000/v1") == "http://h:8000/v1"
    assert SECRET not in redact(f"POST http://a:{SECRET}@h/v1/x failed; see https://{SECRET}@g/")


def test_credentials_in_the_base_url_never_reach_errors_identity_or_keys():
    url = f"http://alice:{SECRET}@127.0.0.1:{_free_port()}/v1"
    backend = OpenAIBackend(base_url=url, model="m", timeout=1)
    rm = FlipReward(backend, method="f1", max_retries=0)
    (res,) = rm.score(["Say hi."], ["Hi!"])
    rm.close()
    assert res.error and "alice:***@127.0.0.1" in res.error, res.error
    shown = json.dumps([res.to_dict(), rm.identity(), backend.cache_identity, backend.model_id])
    assert SECRET not in shown and SECRET not in rm.fingerprint()


def test_the_cli_never_prints_or_writes_credentials(tmp_path):
    from fliprm.cli.main import _register, app

    url = f"http://alice:{SECRET}@127.0.0.1:{_free_port()}/v1"
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": "Say hi.", "response": "Hi!"}) + "\n")
    out = tmp_path / "out.jsonl"
    _register()
    common = ["-b", "openai:m", "--method", "f1", "--base-url", url, "--max-retries", "0",
              "--timeout", "1", "--no-cache"]
    one = CliRunner().invoke(app, ["score", "-i", "Say hi.", "-r", "Hi!", *common])
    many = CliRunner().invoke(app, ["score", str(inp), "-o", str(out), *common])
    assert one.exit_code == 1 and "alice:***@" in one.output, one.output
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert SECRET not in one.output + many.output + written, many.output


def test_the_adapters_server_client_never_reports_credentials():
    url = f"http://alice:{SECRET}@127.0.0.1:{_free_port()}"
    res, _ = _timed(ServerScorer(url, timeout=1.5, retries=0).ascore(["Say hi."], ["Hi!"]))
    assert res[0].error and SECRET not in res[0].error and "alice:***@" in res[0].error


def test_the_servers_replies_never_carry_credentials():
    from fastapi.testclient import TestClient

    from fliprm.server import create_app

    url = f"http://alice:{SECRET}@127.0.0.1:{_free_port()}/v1"
    rm = FlipReward(OpenAIBackend(base_url=url, model="m", timeout=1), method="f1",
                    max_retries=0)
    with TestClient(create_app(rm)) as client:
        scored = client.post("/v1/score", json={"items": [
            {"instruction": "Say hi.", "response": "Hi!"}]}).text
        health = client.get("/health").text
    assert "alice:***@" in scored and SECRET not in scored + health, scored


def test_a_judges_resume_on_a_swapped_model_is_refused(tmp_path):
    from fliprm.eval.best_of_n import arerank
    from fliprm.judges import FlipJudge

    srv = OpenAIStandIn(lambda b: _flip("Say hi."), models=_vllm_models("/models/a"))
    rows = [{"id": "1", "prompt": "Say hi.", "candidates": ["Hi!", "Bye."]}]
    out = tmp_path / "picks.jsonl"
    try:
        def run():
            judge = FlipJudge(OpenAIBackend(base_url=srv.url, model="qwen05"), method="f1")
            return asyncio.run(arerank(rows, judge, out=out))

        assert len(run()) == 1
        srv.models = _vllm_models("/models/b")
        with pytest.raises(ConfigError, match="model_id"):
            run()
    finally:
        srv.close()
