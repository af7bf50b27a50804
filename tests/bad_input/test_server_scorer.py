"""Bad input through the RL adapters' HTTP client (ServerScorer) (helpers: corpus.py)."""

from __future__ import annotations

import asyncio

from bad_input.corpus import GOOD, server_app


def test_server_scorer_sends_a_lone_surrogate_as_one_failed_item(adapter_judge: None) -> None:
    from fliprm.integrations import ServerScorer
    from fliprm.server import ServerThread

    with ServerThread(server_app()) as srv:
        got = asyncio.run(ServerScorer(srv.url).ascore([GOOD, GOOD], [GOOD, "bad \ud800"]))
    assert got[0].reward == 1.0 and got[0].error is None
    assert got[1].reward is None and "field 'response' is not valid Unicode" in got[1].error
