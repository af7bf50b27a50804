"""Bad input through the server's POST /v1/score (corpus, shared tests: corpus.py)."""

from __future__ import annotations

import asyncio

import httpx

from bad_input.corpus import (  # noqa: F401  (shared tests, collected here for ENTRY)
    GOOD,
    _post_all,
    server_app,
    test_bad_value,
    test_rest_of_batch_completes_and_nothing_is_lost,
)

ENTRY = "server_score"


def test_merged_server_batch_names_each_item_by_its_place_in_its_own_request() -> None:
    # a long max_wait makes the batcher merge the two concurrent requests into one batch
    app = server_app(max_wait_ms=200, max_batch_items=64)

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                first = {
                    "items": [
                        {"instruction": GOOD, "response": GOOD},
                        {"instruction": GOOD, "response": GOOD},
                    ]
                }
                second = {
                    "items": [
                        {"instruction": GOOD, "response": GOOD},
                        {"instruction": GOOD, "response": ""},
                    ]
                }
                return list(
                    await asyncio.gather(
                        c.post("/v1/score", json=first), c.post("/v1/score", json=second)
                    )
                )

    r1, r2 = asyncio.run(main())
    assert app.state.metrics.batches == 1  # the two requests really were merged
    bad = r2.json()["results"][1]
    assert bad["error"] == "item 1: field 'response' is empty", bad["error"]
    assert [x["reward"] for x in r1.json()["results"]] == [1.0, 1.0]


def test_lone_surrogate_in_a_refused_request_is_a_422_not_a_500() -> None:
    # FastAPI's own 422 handler echoes the input as UTF-8 and raised on "\ud800"
    (r,) = _post_all(server_app(), [("/v1/score", {"items": [{"\ud800": "x"}]})])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0]
    (r,) = _post_all(server_app(), [("/v1/score", {"items": [{"id": "\ud800", "response": "x"}]})])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "id"]
