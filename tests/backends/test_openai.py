"""The HTTP backend against a real llama.cpp server (the embedded model served on 127.0.0.1 in
a child process started by the test), plus its failure modes."""

import socket
import subprocess
import sys

import pytest

from fliprm import FlipReward
from fliprm.backends.openai import OpenAIBackend
from fliprm.errors import ConfigError
from helpers_fliprm import expected_reward

KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(embedded_backend):  # depends on the fixture only to skip when no model
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fliprm.llama_server", "--port", str(port), "--api-key", KEY, "--n-ctx", "4096"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    yield line.split()[1]
    proc.terminate()
    proc.wait(timeout=30)


pytestmark = pytest.mark.model


def test_flip_over_http_matches_the_json_contract(llama_server):
    backend = OpenAIBackend(base_url=llama_server, model="local", api_key=KEY, max_concurrency=2)
    rm = FlipReward(backend, max_tokens=200)
    instructions = ["Write a haiku about autumn leaves.", "Name the capital of France."]
    res = rm.score(instructions,
                   ["Crimson leaves let go,\ndrifting on the cooling wind,\nautumn's quiet gold.",
                    "The capital of France is Paris."])
    for r, x in zip(res, instructions):
        assert r.error is None and r.parse_ok and r.method == "pmi", r  # the library default
        assert r.reward == pytest.approx(expected_reward(r, x))
        assert r.prompt_tokens > 0 and r.completion_tokens > 0
    rm.close()


def test_likelihood_over_http_on_llama_server_equals_the_embedded_one(llama_server, embedded_backend):
    # llama-server gets the same token-by-token forcing as the embedded runtime
    backend = OpenAIBackend(base_url=llama_server, api_key=KEY, likelihood_mode="forced")
    rm = FlipReward(backend, method="likelihood")
    pairs = (["Name the capital of France.", "Write a poem about dogs."],
             ["The capital of France is Paris."] * 2)
    own, other = rm.score(*pairs)
    assert own.reward > other.reward and own.logprob < 0
    rm.close()
    local = FlipReward(embedded_backend, method="likelihood").score(*pairs)
    for http, emb in zip((own, other), local):
        assert http.extra["forced_tokens"] == emb.extra["forced_tokens"]
        assert http.logprob == pytest.approx(emb.logprob, abs=0.05)


def test_extra_body_is_passed_through(llama_server):
    # llama.cpp's n_predict caps generation: if extra_body reached the server, output is tiny.
    backend = OpenAIBackend(base_url=llama_server, api_key=KEY, extra_body={"n_predict": 3}, schema_mode="off")
    rm = FlipReward(backend, method="f1", max_tokens=200, constrained=False)  # a generation
    (r,) = rm.score(["Say hi."], ["Hi!"])
    assert r.completion_tokens <= 3
    rm.close()


def test_wrong_api_key_is_a_permanent_error_not_retried(llama_server):
    backend = OpenAIBackend(base_url=llama_server, api_key="wrong")
    rm = FlipReward(backend)
    (r,) = rm.score(["Say hi."], ["Hi!"])
    assert r.reward is None and "401" in r.error and rm.engine.stats.calls == 1
    rm.close()


def test_dead_server_is_retried_then_reported_per_item():
    port = _free_port()  # nothing listens here
    backend = OpenAIBackend(base_url=f"http://127.0.0.1:{port}", timeout=2)
    rm = FlipReward(backend, max_retries=2)
    rm.engine.backoff_s = 0.01
    res = rm.score(["a", "b"], ["x", "y"])
    assert all(r.reward is None and "BackendUnavailable" in r.error for r in res)
    assert rm.engine.stats.calls == 6 and rm.engine.stats.retries == 4


def test_server_killed_mid_run_gives_per_item_errors_and_the_run_finishes(embedded_backend):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fliprm.llama_server", "--port", str(port), "--n-ctx", "2048"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    url = proc.stdout.readline().split()[1]
    backend = OpenAIBackend(base_url=url, timeout=30, max_concurrency=1)
    rm = FlipReward(backend, max_tokens=64, max_retries=1)
    rm.engine.backoff_s = 0.05
    first = rm.score(["Say hi."], ["Hi!"])[0]
    assert first.error is None
    proc.kill()
    proc.wait()
    rest = rm.score(["Say bye.", "Say yes."], ["Bye!", "Yes!"])
    assert all(r.reward is None and r.error for r in rest)
    rm.close()


def test_missing_base_url_is_a_config_error(monkeypatch):
    for var in ("FLIPRM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="base URL"):
        OpenAIBackend()
