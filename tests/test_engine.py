"""fliprm.engine: retries and backoff, Retry-After, the total deadline, the cache, merging of
identical requests in flight, and the one factory (Engine.from_runtime) every caller uses.
All on the FakeBackend."""

from __future__ import annotations

import asyncio
import time

import pytest

from fliprm import FlipReward, ResponseCache
from fliprm.backends.fake import FakeBackend
from fliprm.config import RewardConfig, RuntimeOptions
from fliprm.engine import Engine
from fliprm.errors import BackendUnavailable, BadResponse, RateLimited
from fliprm.eval._common import judge_factory
from fliprm.judges import FlipJudge, get_judge
from helpers_fliprm import flip_json


def test_transient_errors_are_retried_and_permanent_ones_are_not():
    replies = [BackendUnavailable("down"), RateLimited("slow", retry_after=0.01), flip_json("Say hi")]
    fb = FakeBackend(replies)
    rm = FlipReward(fb, method="f1")
    rm.engine.backoff_s = 0.001
    (r,) = rm.score(["Say hi"], ["Hi"])
    assert r.reward == 1.0 and len(fb.calls) == 3 and rm.engine.stats.retries == 2

    fb = FakeBackend([BadResponse("400 bad request")])
    (r,) = FlipReward(fb, method="f1").score(["Say hi"], ["Hi"])
    assert r.reward is None and "BadResponse" in r.error and len(fb.calls) == 1


def test_retries_give_up_with_an_error_result():
    fb = FakeBackend(lambda req: BackendUnavailable("connection refused"))
    rm = FlipReward(fb, max_retries=2, method="f1")
    rm.engine.backoff_s = 0.001
    (r,) = rm.score(["Say hi"], ["Hi"])
    assert r.reward is None and "connection refused" in r.error and len(fb.calls) == 3


def test_total_timeout_bounds_a_call():
    fb = FakeBackend(lambda req: flip_json("x"), delay_s=1.0)
    (r,) = FlipReward(fb, total_timeout=0.05, method="f1").score(["x"], ["y"])
    assert r.reward is None and "BackendTimeout" in r.error


def test_cache_serves_repeats_and_never_stores_failures(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    fb = FakeBackend([flip_json("Say hi"), "garbage", flip_json("Say bye")])
    rm = FlipReward(fb, cache=cache, method="f1")
    first = rm.score(["Say hi"], ["Hi"])[0]
    again = rm.score(["Say hello"], ["Hi"])[0]  # same response, other instruction: no call
    assert not first.cached and again.cached and len(fb.calls) == 1
    bad = rm.score(["x"], ["Bye"])[0]
    assert not bad.parse_ok and len(cache) == 1  # the failure was not stored...
    good = rm.score(["Say bye"], ["Bye"])[0]
    assert good.reward == 1.0 and len(fb.calls) == 3  # ...so it is asked again


def test_identical_requests_in_flight_share_one_call():
    fb = FakeBackend(lambda req: flip_json("Say hi"), delay_s=0.05)
    res = FlipReward(fb, method="f1").score(["Say hi"] * 4 + ["Say bye"], ["Hi"] * 4 + ["Bye"])
    assert len(fb.calls) == 2 and all(r.reward is not None for r in res)


def _request():
    from fliprm._types import GenerateRequest

    return GenerateRequest(messages=({"role": "user", "content": "x"},), temperature=0.0)


def test_a_retry_after_beyond_the_deadline_gives_up_at_once_with_the_servers_error():
    fb = FakeBackend([RateLimited("429 rate limited", retry_after=3600), "late"])
    eng = Engine(fb, max_retries=3, total_timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(RateLimited, match="429"):
        asyncio.run(eng.generate(_request()))
    assert time.monotonic() - t0 < 0.5 and len(fb.calls) == 1


def test_a_large_retry_after_is_capped(monkeypatch):
    import fliprm.engine

    monkeypatch.setattr(fliprm.engine, "MAX_RETRY_AFTER_S", 0.2)
    fb = FakeBackend([RateLimited("429", retry_after=3600), "ok"])
    t0 = time.monotonic()
    comp = asyncio.run(asyncio.wait_for(Engine(fb, max_retries=1).generate(_request()), 10))
    took = time.monotonic() - t0
    assert comp.text == "ok" and took < 1.0


def test_engine_from_runtime(tmp_path):
    fb = FakeBackend([])
    rt = RuntimeOptions(max_retries=1, concurrency=2, total_timeout=5.0,
                        cache=str(tmp_path / "a.sqlite"))
    e = Engine.from_runtime(fb, rt)
    assert (e.backend, e.max_retries, e.max_concurrency, e.total_timeout) == (fb, 1, 2, 5.0)
    assert isinstance(e.cache, ResponseCache) and e.cache.path == str(tmp_path / "a.sqlite")
    e2 = Engine.from_runtime(fb, RuntimeOptions(), cache=tmp_path / "b.sqlite")
    assert e2.max_retries == 3 and e2.max_concurrency == fb.max_concurrency
    # no total_timeout given: a finite deadline derived from timeout and retries (issue 21),
    # except on the in-process model, whose thread a deadline could not stop
    assert e2.total_timeout == RuntimeOptions().deadline_s and e2.cache.path == str(tmp_path / "b.sqlite")
    assert Engine.from_runtime(fb, RuntimeOptions()).cache is None


def test_every_caller_builds_its_engine_from_runtime(tmp_path, monkeypatch):
    built = []
    real = Engine.from_runtime.__func__

    def spy(cls, backend, runtime, *, cache=None):
        built.append(runtime.max_retries)
        return real(cls, backend, runtime, cache=cache)

    monkeypatch.setattr(Engine, "from_runtime", classmethod(spy))
    fb = FakeBackend([])
    rt = RuntimeOptions(max_retries=7, total_timeout=9.0)
    assert FlipReward(fb, runtime=rt).engine.max_retries == 7
    assert get_judge("pointwise", backend=fb, runtime=rt).engine.total_timeout == 9.0
    assert FlipJudge(fb, runtime=rt).reward.engine.max_retries == 7
    make = judge_factory(fb, RewardConfig(), runtime=rt, cache=tmp_path / "c.sqlite")
    assert make("pairwise", 0).engine is make("flip", 0).reward.engine
    assert make("listwise", 0).engine.cache is not None
    assert built == [7, 7, 7, 7]


def test_no_default_deadline_is_a_capability_of_in_process_backends_not_a_name():
    """A registered in-process backend (a plugin) gets no default deadline like the embedded
    model (a deadline cannot stop its thread); a remote one named "embedded" gets one."""

    class InProcess(FakeBackend):
        name = "toy-local"
        in_process = True

    class Remote(FakeBackend):
        name = "embedded"

    assert Engine.from_runtime(InProcess([]), RuntimeOptions()).total_timeout is None
    assert Engine.from_runtime(Remote([]), RuntimeOptions()).total_timeout == \
        RuntimeOptions().deadline_s
    from fliprm.backends.embedded import EmbeddedBackend

    assert EmbeddedBackend.in_process is True
