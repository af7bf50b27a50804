"""Issue 22, part 2: outcomes as types, not text.

A context overflow is a :class:`ContextOverflow` raised by the backend that learns it (the
server's reply, parsed once at the boundary: recorded replies in ``fixtures/overflow/``); the
reward catches the type. Every failed result carries an ``error_kind``; summaries count by
kind; the item's place ("item 3", "line 7") is given to the scorer as data and written once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fliprm import FlipReward
from fliprm._types import Completion, GenerateRequest
from fliprm.backends.embedded import EmbeddedBackend
from fliprm.backends.fake import FakeBackend
from fliprm.backends.openai import OpenAIBackend
from fliprm.batch import score_file
from fliprm.errors import (
    ERROR_KINDS,
    BackendTimeout,
    BadResponse,
    ContextOverflow,
    InputError,
    format_error_counts,
)
from fliprm.result import FlipResult

FIXTURES = Path(__file__).parent / "fixtures" / "overflow"
ANSWER = '{"INFERRED INSTRUCTION": "Say hi."}'
F1 = {"method": "f1", "mask_echo": False, "max_retries": 0}


def recorded(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


# ---- the reward catches the type ------------------------------------------------------------


def test_an_overflow_from_the_backend_cuts_the_response_by_its_counts_not_its_message():
    """The message says nothing a regex could read: only the exception's counts are used."""
    seen: list[int] = []

    def reply(req: GenerateRequest) -> str | ContextOverflow:
        n = len(req.messages[-1]["content"])
        seen.append(n)
        if n > 1000:  # ~1 token per character here: 8000 chars is 8000 tokens
            return ContextOverflow(n, 1000, "no numbers in this message")
        return ANSWER

    rm = FlipReward(FakeBackend(reply), max_tokens=32, **F1)
    res = rm.score(["Say hi."], ["hi " * 2700])[0]
    assert res.error is None and res.error_kind is None
    assert res.truncated and res.reward == 1.0
    assert seen[0] > 8000 and seen[-1] <= 1000 and len(seen) == 2


def test_an_overflow_that_never_fits_is_kind_overflow():
    fb = FakeBackend(lambda req: ContextOverflow(None, None, "too long"))
    res = FlipReward(fb, **F1).score(["Say hi."], ["hi " * 200])[0]
    assert res.reward is None and res.error_kind == "overflow"
    assert res.error.startswith("item 0: ContextOverflow: the prompt does not fit")


def test_llama_cpp_wording_in_a_plain_bad_response_is_not_parsed_as_an_overflow():
    """The reward reads types only: the old message regex is gone."""
    msg = "request (9000 tokens) exceeds the available context size (8192 tokens)"
    fb = FakeBackend(lambda req: BadResponse(msg))
    res = FlipReward(fb, **F1).score(["Say hi."], ["hi " * 200])[0]
    assert res.error_kind == "backend" and len(fb.calls) == 1  # no cut-and-retry


@pytest.mark.parametrize(("reply", "kind", "where"), [
    (BackendTimeout("no reply within 1s"), "timeout", "item 0: BackendTimeout"),
    (BadResponse("HTTP 404"), "backend", "item 0: BadResponse"),
    ("not json at all", "parse", "item 0: parse failure"),
])
def test_each_failure_has_its_kind(reply, kind, where):
    rm = FlipReward(FakeBackend(lambda req: reply), parse_failure="error", **F1)
    res = rm.score(["Say hi."], ["hi"])[0]
    assert (res.error_kind, res.error[:len(where)]) == (kind, where)


def test_bad_input_and_internal_kinds():
    rm = FlipReward(FakeBackend([ANSWER]), **F1)
    res = rm.score(["Say hi."], [None])[0]
    assert (res.error_kind, res.error) == ("bad_input", "item 0: field 'response' is missing (null)")

    def boom(req: GenerateRequest) -> str:
        raise KeyError("bug")

    res = FlipReward(FakeBackend(boom), **F1).score(["Say hi."], ["hi"])[0]
    assert res.error_kind == "internal" and res.error.startswith("item 0: internal error: KeyError")


def test_the_caller_names_the_items_once():
    rm = FlipReward(FakeBackend(lambda req: ANSWER), **F1)

    async def run() -> dict[int, FlipResult]:
        return {i: r async for i, r in rm.ascore_stream(["a", "b"], ["x", None],
                                                         where=lambda i: f"line {i + 7}")}

    got = asyncio.run(run())
    assert got[1].error == "line 8: field 'response' is missing (null)"
    assert got[0].error is None


def test_kinds_are_a_closed_set_and_counted_in_words():
    assert ERROR_KINDS == ("bad_input", "backend", "timeout", "overflow", "parse", "internal")
    assert format_error_counts({"timeout": 1, "bad_input": 2}) == "3 (2 bad_input, 1 timeout)"
    assert format_error_counts({}) == "0"


def test_input_error_keeps_its_place_as_data():
    exc = InputError("field 'response' is missing", where="line 4")
    assert (str(exc), exc.where, exc.detail) == (
        "line 4: field 'response' is missing", "line 4", "field 'response' is missing")


# ---- the backends parse the server's reply into the type ------------------------------------


@pytest.mark.parametrize(("name", "n_prompt", "n_ctx"), [
    ("llamacpp.json", 9312, 8192),
    ("vllm.json", 5000, 4096),
    ("vllm_max_tokens.json", 2778, 4096),
    ("vllm_old.json", 4188, 4096),
])
def test_openai_backend_turns_a_recorded_400_into_context_overflow(name, n_prompt, n_ctx):
    body = recorded(name)
    backend = OpenAIBackend(base_url="http://judge.test/v1", model="m", dialect="vllm")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        backend._clients[loop] = httpx.AsyncClient(
            base_url=backend.base_url, transport=httpx.MockTransport(handler))
        try:
            await backend.generate(GenerateRequest(messages=({"role": "user", "content": "x"},)))
        finally:
            await backend.aclose()

    with pytest.raises(ContextOverflow) as info:
        asyncio.run(run())
    assert (info.value.n_prompt, info.value.n_ctx, info.value.status_code) == (n_prompt, n_ctx, 400)


def test_openai_backend_leaves_other_400s_as_bad_response():
    backend = OpenAIBackend(base_url="http://judge.test/v1", model="m", dialect="vllm")
    body = {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError"}}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        backend._clients[loop] = httpx.AsyncClient(
            base_url=backend.base_url,
            transport=httpx.MockTransport(lambda r: httpx.Response(400, json=body)))
        await backend.generate(GenerateRequest(messages=({"role": "user", "content": "x"},)))

    with pytest.raises(BadResponse) as info:
        asyncio.run(run())
    assert not isinstance(info.value, ContextOverflow)


class _Runtime:
    """Stands in for xllamacpp.Server: answers every call with a recorded reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply

    def handle_chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.reply

    def handle_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.reply


def test_embedded_backend_turns_llama_cpp_reply_into_context_overflow():
    backend = EmbeddedBackend()
    backend._server = _Runtime(recorded("llamacpp.json"))  # loaded: start() returns at once
    req = GenerateRequest(messages=({"role": "user", "content": "x"},))
    with pytest.raises(ContextOverflow) as info:
        asyncio.run(backend.generate(req))
    assert (info.value.n_prompt, info.value.n_ctx) == (9312, 8192)
    assert str(info.value).startswith("llama.cpp: request (9312 tokens)")


def test_embedded_backend_other_errors_stay_bad_response():
    backend = EmbeddedBackend()
    backend._server = _Runtime({"error": {"code": 400, "message": "bad grammar",
                                          "type": "invalid_request_error"}})
    req = GenerateRequest(messages=({"role": "user", "content": "x"},))
    with pytest.raises(BadResponse) as info:
        asyncio.run(backend.generate(req))
    assert not isinstance(info.value, ContextOverflow)
    assert str(info.value) == "llama.cpp: bad grammar"


def test_context_overflow_survives_pickling():
    import pickle

    exc = pickle.loads(pickle.dumps(ContextOverflow(9, 8, "m", status_code=413)))
    assert (type(exc), exc.n_prompt, exc.n_ctx, str(exc), exc.status_code) == (
        ContextOverflow, 9, 8, "m", 413)


# ---- results, records and summaries carry the kind ------------------------------------------


def _judge(req: GenerateRequest) -> str | Completion | BackendTimeout:
    if "slow" in req.messages[-1]["content"]:
        return BackendTimeout("no reply within 1s")
    return ANSWER


def test_batch_records_and_summary_count_errors_by_kind(tmp_path):
    inp = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "instruction": "Say hi.", "response": "hi"},
        {"id": "b", "instruction": "Say hi."},                      # no response
        {"id": "c", "instruction": "Say hi.", "response": "slow"},  # times out
        "{broken",
        {"id": "a", "instruction": "Say hi.", "response": "hi"},    # duplicate id
    ]
    inp.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                   encoding="utf-8")
    rm = FlipReward(FakeBackend(_judge), **F1)
    s = asyncio.run(score_file(rm, inp, tmp_path / "out.jsonl"))
    assert s.errors == 4
    assert dict(s.error_kinds) == {"bad_input": 3, "timeout": 1}
    out = {r["line"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert {k: out[k]["error_kind"] for k in out} == {
        1: None, 2: "bad_input", 3: "timeout", 4: "bad_input", 5: "bad_input"}
    assert out[3]["error"].startswith("line 3: BackendTimeout: ")  # named once, by line

    # a resumed run counts the kinds already in the output; records without the field (written
    # before it existed) count as "unknown"
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    old = [json.loads(x) for x in lines]
    for r in old:
        if r["line"] == 4:
            del r["error_kind"]
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    s2 = asyncio.run(score_file(rm, inp, tmp_path / "out.jsonl"))
    assert s2.skipped == 5 and s2.errors == 0
    assert dict(s2.error_kinds_before) == {"bad_input": 2, "timeout": 1, "unknown": 1}


def test_cli_score_summary_names_the_kinds(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from fliprm.backends import fake as fake_module
    from fliprm.cli import score as score_cli

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": "Say hi.", "response": "slow"}) + "\n"
                   + json.dumps({"instruction": "Say hi."}) + "\n"
                   + json.dumps({"instruction": "Say hi."}) + "\n", encoding="utf-8")
    monkeypatch.setattr(fake_module, "scripted_reply", _judge)
    app = typer.Typer()
    score_cli.register(app)
    app.command("noop")(lambda: None)  # two commands: "score" is then a subcommand, as in fliprm
    res = CliRunner().invoke(app, ["score", str(inp), "-o", str(tmp_path / "o.jsonl"), "-b",
                                   "fake", "--method", "f1", "--max-retries", "0"],
                             env={"COLUMNS": "2000"})
    text = " ".join(res.output.split())
    assert res.exit_code == 1, text
    assert "errors (this run) │ 3 (2 bad_input, 1 timeout)" in text


# ---- Ray: rows and summaries carry the kind -------------------------------------------------


def _shard_batch(rows: list[dict[str, Any]]) -> Any:
    pa = pytest.importorskip("pyarrow")
    return pa.Table.from_pylist(rows)


def test_ray_scorer_rows_carry_kinds_and_lines_without_rewriting(monkeypatch):
    """The actor's callable, without Ray: an item that times out, one the reader refused, one
    that scores; errors name the input line."""
    from fliprm.backends import fake as fake_module
    from fliprm.config import RewardConfig, RuntimeOptions
    from fliprm.scale._ray import FlipBatchScorer

    monkeypatch.setattr(fake_module, "scripted_reply", _judge)
    scorer = FlipBatchScorer(RewardConfig(backend="fake", method="f1"),
                             RuntimeOptions(max_retries=0))

    def args(resp: str | None) -> str:
        return json.dumps(["Say hi.", resp, None])

    batch = _shard_batch([
        {"shard": 0, "id": "a", "line": 3, "args": args("hi"), "error": None},
        {"shard": 0, "id": "b", "line": 4, "args": args("slow"), "error": None},
        {"shard": 0, "id": None, "line": 5, "args": None, "error": "line 5: invalid JSON"},
        {"shard": 0, "id": "c", "line": 6, "args": args(None), "error": None},
    ])
    out = {r["line"]: r for r in scorer(batch).to_pylist()}
    assert {k: out[k]["error_kind"] for k in out} == {
        3: None, 4: "timeout", 5: "bad_input", 6: "bad_input"}
    assert out[4]["error"].startswith("line 4: BackendTimeout: ")
    assert out[6]["error"] == "line 6: field 'response' is missing (null)"


def test_ray_shard_report_and_summary_count_by_kind(tmp_path):
    from fliprm.scale._ray import RaySummary, _count_errors, _report
    from fliprm.scale._shards import write_shard

    rows = [{"id": None, "line": 1, **FlipResult(reward=0.5).to_dict()},
            {"id": None, "line": 2, **FlipResult(reward=None, error="line 2: x",
                                                 error_kind="timeout").to_dict()},
            {"id": None, "line": 3, **FlipResult(reward=None, error="line 3: y",
                                                 error_kind="bad_input").to_dict()}]
    for r in rows:
        r["extra"] = None
    summary = RaySummary()
    path = write_shard(tmp_path, 0, rows)
    report = _report(0, rows, path, summary)
    assert report.error_kinds == {"timeout": 1, "bad_input": 1}
    assert dict(summary.error_kinds) == {"timeout": 1, "bad_input": 1}
    assert dict(_count_errors(path)) == {"timeout": 1, "bad_input": 1}


@pytest.mark.slow
def test_ray_end_to_end_summary_counts_errors_by_kind(tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from fliprm.config import RewardConfig
    from fliprm.scale import score_file_ray

    path = tmp_path / "in.jsonl"
    path.write_text("".join(x + "\n" for x in [
        json.dumps({"id": "a", "instruction": "Name a color.", "response": "Blue."}),
        "{broken",
        json.dumps({"id": "c", "instruction": "no response"}),
    ]), encoding="utf-8")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = score_file_ray(path, tmp_path / "ray", config=RewardConfig(backend="fake"),
                           shard_size=2, progress=False)
        assert (s.scored, s.errors, dict(s.error_kinds)) == (3, 2, {"bad_input": 2})
        rows = [r for f in sorted((tmp_path / "ray").glob("shard-*.parquet"))
                for r in pytest.importorskip("pyarrow.parquet").read_table(f).to_pylist()]
        assert [r["error_kind"] for r in rows] == [None, "bad_input", "bad_input"]
        again = score_file_ray(path, tmp_path / "ray", config=RewardConfig(backend="fake"),
                               shard_size=2, progress=False)
        assert (again.shards_skipped, dict(again.error_kinds_before)) == (2, {"bad_input": 2})
    finally:
        if started:
            ray.shutdown()


# ---- the server: replies and /metrics carry the kind -----------------------------------------


def test_server_results_and_metrics_count_errors_by_kind():
    pytest.importorskip("fastapi")
    from fliprm.server import ServerThread, create_app

    rm = FlipReward(FakeBackend(_judge), **F1)
    items = [{"instruction": "Say hi.", "response": "hi"},
             {"instruction": "x" * 50, "response": "hi"},         # over the server's limit
             {"instruction": "Say hi.", "response": "slow"},      # times out
             {"instruction": "Say hi.", "response": None}]        # no response
    with ServerThread(create_app(rm, max_wait_ms=5, max_instruction_chars=40)) as srv:
        got = httpx.post(srv.url + "/v1/score", json={"items": items}, timeout=30).json()
        text = httpx.get(srv.url + "/metrics", timeout=30).text
    res = got["results"]
    assert [r["error_kind"] for r in res] == [None, "bad_input", "timeout", "bad_input"]
    # items scored apart from a refused one keep their place in the request
    assert res[2]["error"].startswith("item 2: BackendTimeout")
    assert res[3]["error"] == "item 3: field 'response' is missing (null)"
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("fliprm_item_error_kinds_total{")}
    # the over-long instruction is counted as refused (rejected_total), not as a scored item
    assert counts == {'fliprm_item_error_kinds_total{kind="bad_input"}': 1.0,
                      'fliprm_item_error_kinds_total{kind="timeout"}': 1.0}
    assert "fliprm_item_errors_total 2" in text


# ---- eval and rerank: records and the failure count carry the kind ---------------------------


def _eval_app() -> Any:
    import typer

    from fliprm.cli import eval as eval_cli
    from fliprm.cli import rerank as rerank_cli

    app = typer.Typer()
    eval_cli.register(app)
    rerank_cli.register(app)
    return app


@pytest.mark.parametrize("kind", ["timeout", "backend"])
def test_eval_and_rerank_records_and_failure_count_by_kind(tmp_path, monkeypatch, kind):
    from typer.testing import CliRunner

    from fliprm.backends.fake import scripted_reply
    from fliprm.cli import _eval_common as eval_common_cli
    from fliprm.engine import Engine
    from fliprm.errors import BackendUnavailable
    from fliprm.records import read_records

    fixtures = Path(__file__).parent / "fixtures"
    exc = BackendTimeout("slow") if kind == "timeout" else BackendUnavailable("refused")

    def reply(req: GenerateRequest) -> Any:  # the pointwise judge fails, FLIP answers
        return exc if "SCORE" in (req.json_schema or {}).get("properties", {}) else \
            scripted_reply(req)

    fb = FakeBackend(reply)
    monkeypatch.setattr(eval_common_cli, "build_backend", lambda config, runtime: fb)
    monkeypatch.setitem(Engine.__init__.__kwdefaults__, "backoff_s", 0.0)
    out = tmp_path / "rb2"
    res = CliRunner().invoke(_eval_app(), [
        "eval", "rewardbench2", "--data", str(fixtures / "rb2_tiny.jsonl"), "--methods",
        "flip,pointwise", "--out", str(out), "--max-retries", "0", "--no-cache"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1, text
    recs = [r for _, r in read_records(out / "records.jsonl")]
    assert {(r["method"], r["error_kind"]) for r in recs} == {("flip", None), ("pointwise", kind)}
    assert f"(pointwise: 3 failed; 3 {kind})" in text

    res = CliRunner().invoke(_eval_app(), [
        "rerank", str(fixtures / "bon_tiny.jsonl"), "--methods", "pointwise",
        "--out", str(tmp_path / "bon"), "--max-retries", "0", "--no-cache"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1, text
    picks = [r for _, r in read_records(tmp_path / "bon" / "pointwise.jsonl")]
    assert [r["error_kind"] for r in picks] == [kind] * 3
    assert f"3 {kind})" in text


def test_http_client_reads_the_kind_and_forgets_kinds_it_does_not_know():
    from fliprm.integrations._replies import result_from_json

    assert result_from_json({"reward": None, "error": "item 0: x",
                             "error_kind": "timeout"}).error_kind == "timeout"
    # a newer server's kind: the result still reads, its kind unknown
    assert result_from_json({"reward": None, "error": "item 0: x",
                             "error_kind": "quota"}).error_kind is None
    # a server from before the field
    assert result_from_json({"reward": None, "error": "item 0: x"}).error_kind is None
