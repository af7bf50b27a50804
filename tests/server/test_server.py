"""fliprm serve over real HTTP on 127.0.0.1: routes, micro-batching, back-pressure, limits,
auth, shutdown; the OpenRLHF route against the real CLI server and the real model."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fliprm import FlipReward, f1_score
from fliprm.backends.fake import FakeBackend
from fliprm.config import RewardConfig
from fliprm.server import ServerThread, create_app
from helpers_fliprm import shown_response

INSTR = "Name the capital of France."


def echo_judge(delay_s: float = 0.0) -> FakeBackend:
    """Infers the response text itself, so every reply can be traced back to its request."""

    def reply(req):
        response = shown_response(req)
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": response.strip()})

    return FakeBackend(reply, delay_s=delay_s)


def serve(backend=None, **app_options) -> ServerThread:
    rm = FlipReward(
        backend or echo_judge(), parse_failure="error", template="flip-short", max_retries=0,
        # the echo judge answers FLIP JSON, and its responses equal their instructions (which
        # the echo guard would mask)
        method="f1", mask_echo=False,
    )
    return ServerThread(create_app(rm, **app_options)).start()


@pytest.fixture
def fast_server():
    srv = serve()
    yield srv
    srv.stop()


def test_score_route_returns_flip_results_in_order(fast_server):
    items = [
        {"instruction": "alpha beta", "response": "alpha beta", "id": "a"},
        {
            "messages": [
                {"role": "user", "content": "gamma"},
                {"role": "assistant", "content": "delta"},
            ]
        },
        {"instruction": "x", "response": ""},  # bad item: an error result, not a failed request
    ]
    r = httpx.post(fast_server.url + "/v1/score", json={"items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["reward"] == 1.0 and res[0]["id"] == "a" and res[0]["parse_ok"] is True
    assert res[1]["reward"] == 0.0 and res[1]["inferred_instruction"] == "delta"
    assert res[2]["reward"] is None and "empty" in res[2]["error"]
    # each result names its item's place in the request, for clients to check
    assert [x["index"] for x in res] == [0, 1, 2] and "id" not in res[1]
    assert httpx.post(fast_server.url + "/v1/score", json={"items": []}).json()["results"] == []
    assert httpx.post(fast_server.url + "/v1/score", json={"itemz": []}).status_code == 422


def test_get_reward_openrlhf_shape_and_empty_lists(fast_server):
    prompt = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    body = {
        "query": [prompt + "alpha beta<|im_end|>", prompt + "<|im_end|>"],
        "prompts": [prompt, prompt],
        "labels": ["alpha beta", "alpha"],
    }
    out = httpx.post(fast_server.url + "/get_reward", json=body).json()
    assert out["rewards"] == [1.0, 0.0] and out["scores"] == [1.0, 0.0]
    assert out["extra_logs"]["flip_failed"] == [0.0, 0.0]
    assert out["extra_info"] == {"flip_method": ["f1", "f1"],
                                 "flip_inferred_instruction": ["alpha beta", ""]}
    # OpenRLHF sends empty lists to all but the first of several URLs
    empty = httpx.post(
        fast_server.url + "/get_reward", json={"query": [], "prompts": [], "labels": []}
    )
    assert empty.status_code == 200
    assert empty.json() == {
        "rewards": [],
        "scores": [],
        "extra_logs": {"flip_failed": [], "flip_precision": [], "flip_recall": [],
                       "flip_parse_ok": []},
        "extra_info": {"flip_method": [], "flip_inferred_instruction": []},
    }
    bad = httpx.post(
        fast_server.url + "/get_reward", json={"query": ["q"], "prompts": [], "labels": ["l"]}
    )
    assert bad.status_code == 422


def test_concurrent_clients_are_batched_and_each_reply_matches_its_request():
    backend = echo_judge(delay_s=0.05)
    srv = serve(backend, max_batch_items=16, max_inflight_batches=1, max_wait_ms=20)
    n = 24

    async def client(i: int) -> tuple[int, dict]:
        async with httpx.AsyncClient(timeout=60) as c:
            words = f"request number {i} token{i}"
            r = await c.post(
                srv.url + "/v1/score",
                json={"items": [{"instruction": words, "response": words, "id": i}]},
            )
            return i, r.json()["results"][0]

    async def main():
        return await asyncio.gather(*(client(i) for i in range(n)))

    try:
        replies = asyncio.run(main())
        text = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    for i, res in replies:
        assert res["id"] == i
        assert res["inferred_instruction"] == f"request number {i} token{i}"
        assert res["reward"] == 1.0
    batches = _metric(text, "fliprm_batches_total")
    assert _metric(text, "fliprm_items_total") == n
    assert 1 <= batches < n, f"{batches} batches for {n} requests: no batching"
    assert len(backend.calls) == n


def test_full_queue_answers_503_with_retry_after():
    srv = serve(
        echo_judge(delay_s=0.4),
        max_queue_items=2,
        max_batch_items=1,
        max_inflight_batches=1,
        max_wait_ms=0,
    )

    async def main():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        srv.url + "/v1/score",
                        json={"items": [{"instruction": "a", "response": "a"}]},
                    )
                    for _ in range(8)
                )
            )

    try:
        replies = asyncio.run(main())
        text = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    codes = sorted(r.status_code for r in replies)
    assert 200 in codes and 503 in codes
    for r in replies:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
    assert 'fliprm_rejected_total{reason="queue_full"}' in text


def test_slow_request_times_out_with_504():
    srv = serve(echo_judge(delay_s=1.0), request_timeout=0.2)
    try:
        r = httpx.post(
            srv.url + "/v1/score", json={"items": [{"instruction": "a", "response": "a"}]}
        )
    finally:
        srv.stop()
    assert r.status_code == 504


def test_body_size_limit_gives_413_declared_or_chunked():
    srv = serve(max_body_bytes=2000)
    big = {"items": [{"instruction": "a", "response": "x" * 5000}]}
    try:
        assert httpx.post(srv.url + "/v1/score", json=big).status_code == 413

        def chunks():
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i : i + 500]

        r = httpx.post(
            srv.url + "/v1/score", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        ok = httpx.post(
            srv.url + "/v1/score", json={"items": [{"instruction": "a", "response": "a"}]}
        )
        assert ok.status_code == 200
    finally:
        srv.stop()


def test_api_key_is_required_except_for_health():
    srv = serve(api_key="s3cret")
    body = {"items": [{"instruction": "a", "response": "a"}]}
    try:
        assert httpx.post(srv.url + "/v1/score", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(srv.url + "/v1/score", json=body, headers=wrong).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.post(srv.url + "/v1/score", json=body, headers=good).status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    finally:
        srv.stop()


def test_metrics_are_prometheus_text(fast_server):
    httpx.post(
        fast_server.url + "/v1/score", json={"items": [{"instruction": "a", "response": "b"}]}
    )
    httpx.get(fast_server.url + "/nope")
    text = httpx.get(fast_server.url + "/metrics").text
    for name in (
        "fliprm_requests_total",
        "fliprm_items_total",
        "fliprm_batches_total",
        "fliprm_queue_depth",
        "fliprm_item_errors_total",
        "fliprm_backend_calls_total",
        "fliprm_request_latency_seconds_bucket",
    ):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text
    assert 'fliprm_requests_total{route="/v1/score",code="200"} 1' in text
    assert 'route="other",code="404"' in text


def test_graceful_shutdown_finishes_in_flight_requests():
    srv = serve(echo_judge(delay_s=0.6))
    got: dict = {}

    def call():
        got["r"] = httpx.post(
            srv.url + "/v1/score",
            timeout=30,
            json={"items": [{"instruction": "a b", "response": "a b"}]},
        )

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.2)  # the request is now being scored
    srv.stop()
    t.join(10)
    assert got["r"].status_code == 200 and got["r"].json()["results"][0]["reward"] == 1.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=2)


def test_cli_refuses_public_host_without_api_key():
    from typer.testing import CliRunner

    from fliprm.cli.main import _register, app

    _register()
    env = {k: v for k, v in os.environ.items() if k != "FLIPRM_API_KEY"}
    res = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"], env=env)
    assert res.exit_code != 0
    assert "api-key" in res.output.lower() or "api_key" in res.output.lower()


def _served_reward(monkeypatch, args):
    """The FlipReward that ``fliprm serve ARGS`` would serve (uvicorn is not started)."""
    import uvicorn
    from typer.testing import CliRunner

    import fliprm.server
    from fliprm.cli.main import _register, app

    seen: dict = {}
    monkeypatch.setattr(fliprm.server, "create_app", lambda reward, **kw: seen.setdefault("rm", reward))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: None)
    _register()
    res = CliRunner().invoke(app, ["serve", *args])
    return res, seen.get("rm")


def test_cli_serve_starts_from_the_rl_preset_and_every_flag_reaches_the_reward(monkeypatch):
    res, rm = _served_reward(monkeypatch, ["-b", "fake", "--no-cache"])
    assert res.exit_code == 0, res.output
    rl = RewardConfig.preset("rl", backend="fake")
    assert rm.config == rl and rm.config.mask_echo is True and rm.config.parse_failure == "error"
    res, rm = _served_reward(monkeypatch, ["-b", "fake", "--no-mask-echo", "--template", "flip",
                                           "--method", "likelihood", "--max-tokens", "64"])
    assert res.exit_code == 0, res.output
    assert rm.config.mask_echo is False and rm.family.contextual.name == "flip-contextual"
    assert (rm.config.method, rm.config.max_tokens) == ("likelihood", 64)


@pytest.mark.parametrize("args, message", [
    (["-b", "nope"], "unknown backend 'nope'"),
    (["-b", "fake", "--template", "nope"], "unknown template 'nope'"),
    (["-b", "fake", "--max-response-chars", "0"], "max_response_chars: must be >= 1"),
])
def test_cli_serve_bad_settings_are_one_line_errors(monkeypatch, args, message):
    # Regression: `fliprm serve -b nope` / `--template nope` printed a traceback.
    res, rm = _served_reward(monkeypatch, args)
    assert res.exit_code == 2 and rm is None
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


# ---- the real model --------------------------------------------------------------------------


@pytest.mark.model
def test_real_model_scores_through_the_server(embedded_backend):
    rm = FlipReward(embedded_backend, max_tokens=96, template="flip-short", parse_failure="error",
                    method="f1")  # the generation's fields are checked: the F1 method, named
    with ServerThread(create_app(rm)) as srv:
        r = httpx.post(
            srv.url + "/v1/score",
            timeout=300,
            json={"items": [{"instruction": INSTR, "response": "Paris is the capital of France."}]},
        )
    res = r.json()["results"][0]
    assert res["error"] is None and res["parse_ok"] is True
    assert res["inferred_instruction"]
    assert res["reward"] == pytest.approx(f1_score(res["inferred_instruction"], INSTR).f1)
    assert res["completion_tokens"] > 0


@pytest.mark.model
@pytest.mark.slow
def test_openrlhf_http_against_real_fliprm_serve_cli(embedded_backend, tmp_path):
    """`fliprm serve` as a process (the real CLI), judging with the real model over its HTTP."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FLIPRM_BACKEND_API_KEY": embedded_backend.api_key}
    env.pop("FLIPRM_API_KEY", None)
    cmd = [
        sys.executable,
        "-m",
        "fliprm.cli.main",
        "serve",
        "--port",
        str(port),
        "--backend",
        "openai",
        "--base-url",
        embedded_backend.http_url,
        "--no-cache",
        "--template",
        "flip-short",
        "--max-tokens",
        "96",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        prompt = (
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        )
        body = {
            "query": [prompt + "Paris is the capital of France.<|im_end|>"],
            "prompts": [prompt],
            "labels": [INSTR],
        }
        out = httpx.post(url + "/get_reward", json=body, timeout=300).json()
        # the served RL default is pmi: reward = sigmoid(PMI), the PMI logged beside it
        assert out["extra_info"]["flip_method"] == ["pmi"]
        (pmi,) = out["extra_logs"]["flip_pmi"]
        assert out["rewards"] == [pytest.approx(1.0 / (1.0 + math.exp(-pmi)))]
        assert out["scores"] == out["rewards"] and out["extra_logs"]["flip_failed"] == [0.0]
        empty = httpx.post(url + "/get_reward", json={"query": [], "prompts": [], "labels": []})
        assert empty.json()["rewards"] == []
        text = httpx.get(url + "/metrics").text
        assert _metric(text, "fliprm_items_total") == 1
        # the RL default is pmi: the instruction teacher-forced after the response, and once
        # more after an empty response (its baseline; memoised per instruction); before them,
        # serve asked the judge server what it serves (GET /models: can it give log-probs?)
        assert _metric(text, "fliprm_backend_calls_total") == 3
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fliprm serve exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("fliprm serve did not become healthy")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_server_scorer_chunks_keeps_order_and_fails_soft():
    from fliprm.integrations import ServerScorer

    srv = serve(api_key="k")
    try:
        client = ServerScorer(srv.url, api_key="k", chunk_items=2)
        words = [f"item {i} word{i}" for i in range(5)]
        results = await client.ascore(words, words)
        assert client.calls == 3
        assert [r.inferred_instruction for r in results] == words
        assert all(r.reward == 1.0 for r in results)
        # a wrong key is a judge failure for each item (reward None), not an exception
        bad = await ServerScorer(srv.url, api_key="nope").ascore(["a"], ["a"])
        assert bad[0].reward is None and "401" in bad[0].error
    finally:
        srv.stop()
