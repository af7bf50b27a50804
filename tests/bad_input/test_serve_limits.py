"""Bad input through fliprm serve: the API key on reachable hosts and the body-size limit (helpers: corpus.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bad_input.corpus import CALLS, GOOD, PROMPT, _post_all, invoke, server_app


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "my-host.example"])
def test_serve_refuses_a_reachable_host_without_an_api_key(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    def started(*a: Any, **k: Any) -> None:
        raise AssertionError(f"the server started on {host} without an API key")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.delenv("FLIPRM_API_KEY", raising=False)
    code, output = invoke(["serve", "--host", host, "--backend", "fake", "--no-cache"])
    assert code == 2 and "--api-key" in output and host in output, output


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_api_key(host: str) -> None:
    from fliprm.cli.serve import is_loopback

    assert is_loopback(host)


@pytest.mark.parametrize("route", ["/v1/score", "/get_reward"])
def test_oversized_body_is_refused_with_413_before_any_scoring(route: str) -> None:
    CALLS.clear()
    body: dict[str, Any] = (
        {"items": [{"instruction": GOOD, "response": "x" * 5000}]}
        if route == "/v1/score"
        else {"query": [PROMPT + "x" * 5000], "prompts": [PROMPT], "labels": [GOOD]}
    )
    (r,) = _post_all(server_app(max_body_bytes=2000), [(route, body)])
    assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
    assert not CALLS
