"""fliprm serve at its boundaries (issue 21, "nothing silent"), over real sockets on 127.0.0.1:

- a model file that does not load is never reported healthy: ``fliprm serve`` exits non-zero
  with one line naming the file and its hash, an in-process server answers 503 naming it, and
  the file is not re-hashed per request;
- CPU work on big requests (JSON parsing, validation, the echo guard) runs off the event loop,
  so /health and small requests are answered while it runs; an over-long instruction is that
  item's error;
- a client that never reads its reply is dropped once its reply stalls, instead of holding the
  connection and the buffered reply.

The fake backend stands in for the model; the "model files" are a few bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import fliprm.model
from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend
from fliprm.model import DEFAULT_MODEL
from fliprm.server import ServerThread, create_app
from helpers_fliprm import shown_response


def echo_judge(delay_s: float = 0.0) -> FakeBackend:
    """Infers the response text itself: every reward can be traced back to its request."""

    def reply(req: Any) -> str:
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": shown_response(req).strip()})

    return FakeBackend(reply, delay_s=delay_s, max_concurrency=8)


def short_judge() -> FakeBackend:
    """Infers the first 30 words of the response, as long as a real inferred instruction."""

    def reply(req: Any) -> str:
        words = " ".join(shown_response(req).split()[:30])
        return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": words})

    return FakeBackend(reply, max_concurrency=8)


def make_reward(backend: FakeBackend | None = None, **options: Any) -> FlipReward:
    # the method is explicit: the library default is changing (f1 -> pmi)
    options.setdefault("method", "f1")
    return FlipReward(backend or echo_judge(), parse_failure="error", template="flip-short",
                      max_retries=0, **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 1. a model that does not load is never healthy ------------------------------------------


def test_fliprm_serve_with_a_corrupt_model_file_exits_non_zero_naming_the_file_and_hash(
    tmp_path: Path,
) -> None:
    # Regression: /health said 200 "ok" (with the expected hash) while the packaged model file
    # was corrupt; every item then failed with ModelIntegrityError, each request re-hashing it.
    bad = tmp_path / DEFAULT_MODEL.file_name
    bad.write_bytes(b"GGUF but not the pinned model" * 10)
    port = free_port()
    env = {**os.environ, "FLIPRM_CACHE_DIR": str(tmp_path), "COLUMNS": "1000"}
    env.pop("FLIPRM_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fliprm.cli.main", "serve", "-b", "embedded", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            assert health.status_code != 200, f"healthy with a corrupt model: {health.text}"
            time.sleep(0.1)
        assert proc.poll() is not None, "fliprm serve kept running with a corrupt model"
        out = proc.stdout.read().decode()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode not in (0, None), out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out, out
    assert str(bad) in lines[0] and DEFAULT_MODEL.sha256 in lines[0], out
    assert "ModelIntegrityError" in lines[0] or "refusing to load" in lines[0], out


def test_a_server_whose_model_fails_its_hash_is_503_on_health_and_score_and_hashes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"x" * 1000)
    hashed: list[Path] = []
    real = fliprm.model.sha256_file
    monkeypatch.setattr(fliprm.model, "sha256_file", lambda p: hashed.append(p) or real(p))
    rm = FlipReward(f"gguf:{bad}", method="f1", backend_options={"sha256": "1" * 64},
                    max_retries=0)
    with ServerThread(create_app(rm)) as srv:
        health = httpx.get(srv.url + "/health", timeout=10)
        assert health.status_code == 503, health.text
        body = health.json()
        assert body["status"] == "model failed to load"
        assert str(bad) in body["error"] and "1" * 64 in body["error"]
        for _ in range(3):
            r = httpx.post(srv.url + "/v1/score", json={"items": [
                {"instruction": "Say hi", "response": "hi"}]}, timeout=10)
            assert r.status_code == 503, r.text
            assert str(bad) in r.json()["detail"]
            r = httpx.post(srv.url + "/get_reward", json={
                "query": ["hi"], "prompts": [""], "labels": ["Say hi"]}, timeout=10)
            assert r.status_code == 503, r.text
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 503
    assert hashed == [bad]  # at startup, once; never per request


def test_a_failed_model_load_is_remembered_not_retried_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fliprm.backends.embedded import EmbeddedBackend
    from fliprm.errors import ModelIntegrityError

    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"x" * 1000)
    hashed: list[Path] = []
    real = fliprm.model.sha256_file
    monkeypatch.setattr(fliprm.model, "sha256_file", lambda p: hashed.append(p) or real(p))
    backend = EmbeddedBackend(bad, sha256="1" * 64)
    for _ in range(3):
        with pytest.raises(ModelIntegrityError, match="refusing to load"):
            backend.start()
    assert hashed == [bad]


# ---- 3. a reply nobody reads does not hold the connection ------------------------------------


def test_clients_that_never_read_their_big_replies_are_dropped_after_the_write_stalls() -> None:
    # Regression: clients that never read their ~3 MB replies kept their connections (and the
    # buffered replies) 45 s past the 15 s idle timeout: uvicorn's close waits for the buffer
    # to drain, which never happens. Now a write stalled for write_timeout (default: the idle
    # timeout) aborts the connection.
    words = " ".join(f"w{i}" for i in range(12_000))  # ~80 KB per item, echoed back
    body = json.dumps({"items": [{"instruction": "Repeat the words", "response": f"{i} {words}"}
                                 for i in range(60)]}).encode()
    head = (b"POST /v1/score HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    app = create_app(make_reward())
    with ServerThread(app, idle_timeout=1.0) as srv:
        gate = app.state.connections
        socks = []
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that never reads
            s.connect((srv.host, srv.port))
            s.sendall(head + body)
            socks.append(s)
        try:
            t0 = time.monotonic()
            while gate.open and time.monotonic() - t0 < 20:
                time.sleep(0.1)
            # scoring 60 items, then 1 s without progress; generous for a shared machine
            assert gate.open == 0, f"{gate.open} stalled readers still connected after 20 s"
            assert gate.closed["write_timeout"] == 3
            # the server is fine afterwards
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
        finally:
            for s in socks:
                s.close()



class _Transport:
    """What the write deadline sees of a transport: its buffer, and abort."""

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


async def test_the_write_deadline_spares_a_slow_reader_that_keeps_reading() -> None:
    # The deadline measures progress, not the reply's total time: a reader that takes some
    # bytes every period keeps its connection however long the reply takes.
    from uvicorn.protocols.http.flow_control import FlowControl

    from fliprm.server._protocol import ConnectionGate, guarded_protocol

    gate = ConnectionGate(10)
    cls = guarded_protocol(30.0, 2.0, gate, write_timeout=0.3)
    proto = cls.__new__(cls)  # only what the write deadline touches
    proto.loop = asyncio.get_running_loop()
    proto.transport = transport = _Transport(1_000_000)
    proto.flow = FlowControl(transport)  # type: ignore[arg-type]
    proto.pause_writing()
    for _ in range(12):  # 1.2 s of slow reading: four write_timeouts
        await asyncio.sleep(0.1)
        transport.buffered -= 1000
    assert not transport.aborted and gate.closed["write_timeout"] == 0
    await asyncio.sleep(0.8)  # the reader stops reading
    assert transport.aborted and gate.closed["write_timeout"] == 1
    proto._cancel_write_deadline()


# ---- 2. big requests do not stall the event loop ---------------------------------------------


def _words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_health_and_small_requests_are_answered_while_big_requests_are_prepared() -> None:
    # Regression: three 14 MB requests took 29 s during which 12 of 21 /health probes and 2 of
    # 8 normal requests timed out: JSON parsing, validation and the echo guard ran on the event
    # loop. Now they run in worker threads.
    instruction = _words(2_000, "i")  # ~14,000 characters, under the instruction cap
    items = [{"instruction": instruction,
              "response": f"{_words(8_000, f'r{k}x')} {instruction} {k}"} for k in range(60)]
    body = json.dumps({"items": items})
    assert 5_000_000 < len(body) < 16 * 1024 * 1024
    app = create_app(make_reward(short_judge(), mask_echo=True))
    with ServerThread(app) as srv:
        big: dict[str, Any] = {}

        def post_big() -> None:
            big["r"] = httpx.post(srv.url + "/v1/score", content=body, timeout=300,
                                  headers={"content-type": "application/json"})

        workers = [threading.Thread(target=post_big) for _ in range(2)]
        for w in workers:
            w.start()
        probes: list[float] = []
        small: list[float] = []
        while any(w.is_alive() for w in workers):
            t0 = time.monotonic()
            assert httpx.get(srv.url + "/health", timeout=30).status_code == 200
            probes.append(time.monotonic() - t0)
            t0 = time.monotonic()
            r = httpx.post(srv.url + "/v1/score", timeout=30, json={"items": [
                {"instruction": "Say hi", "response": "hi there"}]})
            assert r.status_code == 200 and r.json()["results"][0]["error"] is None
            small.append(time.monotonic() - t0)
            time.sleep(0.05)
        for w in workers:
            w.join()
    results = big["r"].json()["results"]
    assert big["r"].status_code == 200 and len(results) == 60
    # the guard ran: the copied instruction is masked out of what the judge saw
    assert all(r["error"] is None and r["extra"]["echo_masked_words"] >= 2_000 for r in results)
    assert max(probes) < 1.0, f"/health took {max(probes):.2f}s (all: {probes})"
    # a one-item request may wait for a batch slot the big requests hold; most do not
    assert sorted(small)[len(small) // 2] < 1.0, f"one-item requests took {small}"
    assert len(probes) >= 3, "the big requests finished too fast to probe"


def test_an_over_long_instruction_is_its_items_error_not_scored_and_not_a_500() -> None:
    # Regression: a 10 MB instruction was scored (the echo guard alone spent 2.5 s on the
    # event loop); the instruction now has its own cap, 20,000 characters by default.
    long_instr = "word " * 5_000  # 25,000 characters
    items = [
        {"instruction": "Say hi", "response": "hi there", "id": "ok"},
        {"instruction": long_instr, "response": "hi there", "id": "long"},
        {"messages": [{"role": "user", "content": "short context turn"},
                      {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": long_instr + "again"},
                      {"role": "assistant", "content": "fine"}], "id": "chat"},
    ]
    app = create_app(make_reward(short_judge(), mask_echo=True))
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/v1/score", json={"items": items}, timeout=30)
        assert r.status_code == 200, r.text
        ok, long, chat = r.json()["results"]
        assert ok["id"] == "ok" and ok["error"] is None and ok["reward"] is not None
        assert long["reward"] is None and long["error"] == (
            "item 1: field 'instruction' has 25,000 characters, over this server's limit of "
            "20,000 (--max-instruction-chars)")
        assert chat["reward"] is None and chat["error"].startswith(
            "item 2: field 'instruction' has 25,005 characters")
        # OpenRLHF: the label is the instruction; a failed item gets failure_score
        r = httpx.post(srv.url + "/get_reward", timeout=30, json={
            "query": ["p1 answer one", "p2 answer two"], "prompts": ["p1", "p2"],
            "labels": ["Say hi", long_instr]})
        assert r.status_code == 200, r.text
        assert r.json()["extra_logs"]["flip_failed"] == [0.0, 1.0]
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        assert 'fliprm_rejected_total{reason="instruction_too_long"} 3' in metrics
    app = create_app(make_reward(short_judge()), max_instruction_chars=5)
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/v1/score", json={"items": items[:1]}, timeout=30)
        assert r.json()["results"][0]["error"].startswith(
            "item 0: field 'instruction' has 6 characters, over this server's limit of 5 ")


async def test_a_request_is_answered_when_its_own_items_are_done_not_its_whole_batch() -> None:
    # Regression: a one-item request that shared a micro-batch with a big one waited for all of
    # the big one's items.
    from fliprm.server._batcher import MicroBatcher
    from fliprm.server._metrics import Metrics

    release = asyncio.Event()

    class Gated(FakeBackend):
        async def generate(self, request: Any) -> Any:
            if "slow" in shown_response(request):
                await release.wait()
            return await super().generate(request)

    judge = short_judge()
    rm = make_reward(Gated(judge._fn, max_concurrency=8))
    batcher = MicroBatcher(rm, Metrics(), max_batch_items=32, max_wait_s=0.05,
                           max_queue_items=100, max_inflight_batches=1)
    slow = asyncio.ensure_future(batcher.submit(["Say hi"] * 3, ["slow one", "slow two", "ok"],
                                                [None] * 3))
    fast = asyncio.ensure_future(batcher.submit(["Say hi"], ["fast answer"], [None]))
    (res,) = await asyncio.wait_for(fast, 10)  # one batch with the slow request: not held back
    assert res.error is None and res.inferred_instruction == "fast answer"
    assert not slow.done()
    release.set()
    assert [r.inferred_instruction for r in await asyncio.wait_for(slow, 10)] == [
        "slow one", "slow two", "ok"]
    await batcher.aclose()


# ---- ServerOptions: one definition of the server's settings (issue 22) ------------------------


def _served_options(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[Any, Any]:
    """The ServerOptions ``fliprm serve ARGS`` would serve with (uvicorn is not started)."""
    import uvicorn
    from typer.testing import CliRunner

    import fliprm.server
    from fliprm.cli.main import _register, app

    seen: dict[str, Any] = {}
    real = fliprm.server.create_app

    def capture(reward: Any, **kw: Any) -> Any:
        seen["options"] = kw["options"]
        return real(reward, **kw)

    monkeypatch.setattr(fliprm.server, "create_app", capture)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: seen.setdefault(
        "config", self.config))
    monkeypatch.delenv("FLIPRM_API_KEY", raising=False)
    _register()
    res = CliRunner().invoke(app, ["serve", "-b", "fake", *args])
    return res, seen


def test_every_server_flag_is_derived_from_server_options_and_reaches_app_and_uvicorn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fliprm.config import ServerOptions

    res, seen = _served_options(monkeypatch, [
        "--port", "0", "--max-batch", "7", "--max-queue", "70", "--max-wait-ms", "9",
        "--max-body-mb", "0.5", "--max-instruction-chars", "123", "--failure-score", "-1",
        "--idle-timeout", "4", "--write-timeout", "3", "--log-level", "warning",
        "--api-key", "k"])
    assert res.exit_code == 0, res.output
    opts = seen["options"]
    assert opts == ServerOptions(port=0, max_batch_items=7, max_queue_items=70, max_wait_ms=9,
                                 max_body_mb=0.5, max_instruction_chars=123, failure_score=-1,
                                 idle_timeout=4, write_timeout=3, log_level="warning",
                                 api_key="k")
    config = seen["config"]
    assert (config.port, config.timeout_keep_alive, config.log_level) == (0, 4, "warning")
    # every field but the key (its own --api-key with FLIPRM_SERVER_API_KEY) has a flag
    from fliprm.cli._config_options import _params
    flags = {p.name for p in _params(ServerOptions, ())}
    assert flags == set(ServerOptions.model_fields) - {"api_key"}


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "0"], "max_batch_items: must be >= 1"),
    (["--idle-timeout", "-1"], "idle_timeout: must be > 0"),
    (["--log-level", "loud"], "log_level: Input should be"),
])
def test_bad_server_flags_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                              message: str) -> None:
    res, seen = _served_options(monkeypatch, args)
    assert res.exit_code == 2 and "options" not in seen
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_create_app_takes_options_and_keyword_changes_on_top() -> None:
    from fliprm.config import ServerOptions
    from fliprm.errors import ConfigError

    base = ServerOptions(max_wait_ms=7, max_instruction_chars=10)
    app = create_app(make_reward(), base, max_body_bytes=2000, drain_timeout=3)
    assert app.state.options == base.replace(max_body_mb=2000 / 2**20, graceful_timeout=3)
    assert app.state.options.max_body_bytes == 2000 and app.state.batcher.max_wait_s == 0.007
    with pytest.raises(ConfigError, match="unknown_option"):
        create_app(make_reward(), unknown_option=1)


# ---- the echo guard's near-copy marking is linear, with the same masks -------------------------


def _near_copies_reference(seq: list[str], instr: list[str], coverage: float) -> set[int]:
    """The guard's earlier, quadratic marking (every window re-scanned), for comparison."""
    import math
    from collections import Counter

    from fliprm.guard import STOP_WORDS

    want = Counter(w for w in instr if w not in STOP_WORDS)
    n = sum(want.values())
    if n < 2:
        return set()
    need = max(2, math.ceil(coverage * n))
    width = len(instr) + max(2, len(instr) // 4)
    hit: set[int] = set()
    have: Counter[str] = Counter()
    overlap = 0
    for j, w in enumerate(seq):
        if w in want:
            have[w] += 1
            overlap += have[w] <= want[w]
        k = j - width
        if k >= 0 and seq[k] in want:
            overlap -= have[seq[k]] <= want[seq[k]]
            have[seq[k]] -= 1
        if overlap >= need:
            hit.update(i for i in range(max(0, j - width + 1), j + 1) if seq[i] in want)
    return hit


def test_near_copy_marking_matches_the_quadratic_reference() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fliprm.guard import _near_copies

    words = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "the", "of", "x"]), max_size=60)

    @settings(max_examples=300, deadline=None)
    @given(words, words, st.sampled_from([0.5, 0.7, 1.0]))
    def check(seq: list[str], instr: list[str], coverage: float) -> None:
        assert _near_copies(seq, instr, coverage) == _near_copies_reference(seq, instr, coverage)

    check()


async def test_flipreward_prepares_a_big_item_off_the_event_loop() -> None:
    # The library, not just the server: any asyncio caller (an RL trainer's loop) keeps running
    # while a megabyte item is validated, cut and echo-masked.
    rm = make_reward(short_judge(), mask_echo=True)
    instruction = _words(150_000, "i")  # ~1.1 MB: no cap in the library
    response = "Sure. " + instruction[:150_000] + " done"
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    t0 = time.perf_counter()
    (res,) = await rm.ascore([instruction], [response])
    elapsed = time.perf_counter() - t0
    done = True
    await tick
    assert res.error is None and res.extra["echo_masked_words"] > 20_000
    # on the loop, one gap was the whole preparation; off it, the loop ticks throughout
    assert max(gaps) < elapsed / 2, (max(gaps), elapsed)


def test_bodies_parsed_off_the_loop_keep_fastapis_422_shape() -> None:
    with ServerThread(create_app(make_reward())) as srv:
        r = httpx.post(srv.url + "/v1/score", content=b'{"items": [', timeout=10,
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
        assert r.json()["detail"][0]["loc"] == ["body", 11]
        r = httpx.post(srv.url + "/v1/score", json={"itemz": []}, timeout=10)
        assert r.status_code == 422
        assert [e["loc"] for e in r.json()["detail"]] == [["body", "items"], ["body", "itemz"]]
        r = httpx.post(srv.url + "/get_reward", json={"query": ["q"], "labels": []}, timeout=10)
        assert r.status_code == 422 and r.json()["detail"] == "0 labels for 1 queries"
        schema = httpx.get(srv.url + "/openapi.json", timeout=10).json()
        body = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
        assert "instruction" in body["schema"]["properties"]["items"]["items"]["properties"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_prepares_big_items_too() -> None:
    # the preparation thread is not inherited by a fork (data loader workers): the child makes
    # its own instead of queueing work for a thread that does not exist (it hung)
    import signal
    import warnings

    big = _words(8_000, "w")
    rm = make_reward(short_judge())
    assert rm.score(["Say hi"], [big])[0].error is None  # the parent's thread exists now
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            err = make_reward(short_judge()).score(["Say hi"], [big])[0].error
            os.write(write, b"ok" if err is None else b"error")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung preparing a big item")
        time.sleep(0.05)
    assert os.read(read, 16) == b"ok"
    os.close(read)
