"""Issue 6, bad input and faults: a corpus of bad items pushed through every entry point, the
output location failing, `fliprm eval rewardbench2` killed and resumed, and the server's
security limits.

Each bad item gets either a clear error naming the item and the field, or a documented,
deliberate handling (``Case.handling``); the rest of its batch is scored and there is exactly
one output per input. Everything runs on a scripted judge (no model), in seconds.

This module holds the corpus, the scripted judge, one run of the whole corpus per entry point
(module-scoped fixtures, registered in conftest.py) and the tests the entry points share
(``test_*``, written once here). Each entry point's module,
``tests/bad_input/test_<entry point>.py``, names its entry point (``ENTRY``, which the
``entry`` fixture hands to the shared tests), imports the shared tests that apply to it, so
pytest collects them there, and holds the tests only that entry point has.

Deliberate handlings, per entry point:

- RL adapters and ``/get_reward``: an empty completion scores 0.0 without a judge call (a real
  bad answer); any other bad item is a failure (TRL: None; verl, OpenRLHF, open-instruct:
  ``failure_score`` and ``flip_failed``), since those frameworks need a number per sample.
- ``/get_reward``: OpenRLHF's queries are strings; a non-string one is a 422 naming it.
- ``fliprm eval rewardbench2`` and ``fliprm rerank`` check the whole file first: a bad prompt,
  a non-text answer, a broken line or a duplicate id stops the run (exit 2) naming the row and
  the field, before any call. An empty answer is judged (FLIP ranks it last, naming it).
- CSV cells are untyped text: ``42`` is scored as the text "42".
- A raw NUL byte makes a JSON line invalid (an error); an escaped one, or one in a CSV cell, is
  dropped from the text. A UTF-8 BOM before the first line is ignored.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

import fliprm.backends.fake as fake_module
from fliprm import FlipReward, Template
from fliprm._types import GenerateRequest
from fliprm.backends.fake import FakeBackend
from fliprm.errors import BadResponse, ContextOverflow
from fliprm.integrations import set_reward

pytest.importorskip("fastapi")

# ---- the scripted judge -------------------------------------------------------------------

#: the judge's context window; like llama.cpp it counts ~4 characters per token
CTX_TOKENS = 6000
#: every request the judge saw (cleared by each entry point's run)
CALLS: list[GenerateRequest] = []

ECHO = Template(
    name="echo",
    system="Infer the instruction behind the response.",
    user="[Response]\n{response}\n\n[Your Inferred Instruction]",
)


def judge_reply(req: GenerateRequest) -> str | BadResponse:
    """Echoes the response back as the inferred instruction (so reward 1.0 proves the text
    arrived intact), answers the baseline judges' schemas, and refuses a prompt over its
    context as the backends do (a ContextOverflow with the counts), which FlipReward catches to
    cut the response to fit."""
    CALLS.append(req)
    n = sum(len(m["content"]) for m in req.messages) // 4
    if n > CTX_TOKENS:
        return ContextOverflow(n, CTX_TOKENS)
    props = (req.json_schema or {}).get("properties", {})
    if "SCORE" in props:
        answer: dict[str, Any] = {"REASONING": "r", "SCORE": 5}
    elif "BETTER_RESPONSE" in props:
        answer = {"REASONING": "r", "BETTER_RESPONSE": "A"}
    elif "BEST_RESPONSE_INDEX" in props:
        answer = {"REASONING": "r", "BEST_RESPONSE_INDEX": 0}
    else:
        text = req.messages[-1]["content"]
        response = text.split("[Response]\n", 1)[-1].split("\n\n[Your Inferred", 1)[0]
        if response.startswith("<response>\n"):  # the built-in templates' delimiters
            response = response[len("<response>\n"):].rsplit("\n</response>", 1)[0]
        answer = {"REASONING": "echo", "INFERRED INSTRUCTION": response[:2000]}
    return json.dumps(answer, ensure_ascii=False)


#: the echo judge answers FLIP JSON and gives the response back, so reward 1.0 proves the text
#: arrived intact: the F1 method without the echo guard (instruction == response here), named
ECHO_F1 = {"method": "f1", "mask_echo": False}


def judge_reward() -> FlipReward:
    return FlipReward(FakeBackend(judge_reply), template=ECHO, parse_failure="error", max_retries=0,
                      **ECHO_F1)


@pytest.fixture(scope="module")
def scripted_cli() -> Iterator[None]:
    """`--backend fake` in the CLI answers with :func:`judge_reply`; report plots are skipped
    (matplotlib costs seconds and is tested elsewhere)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fake_module, "scripted_reply", judge_reply)
        mp.setattr("fliprm.eval.rb2_report._plots", lambda summary, out_dir: [])
        mp.setattr("fliprm.eval.bon_report._plot", lambda summary, path: False)
        yield


def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    for name in ("score", "eval", "rerank", "serve"):
        importlib.import_module(f"fliprm.cli.{name}").register(app)
    return app


def invoke(args: list[str], **kw: Any) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, output with whitespace collapsed, since rich wraps)."""
    env = {"COLUMNS": "2000", **kw.pop("env", {})}  # rich would break long paths mid-word
    if args[0] == "score":  # the echo judge's reward (see ECHO_F1)
        args = [*args, "--method", "f1", "--no-mask-echo"]
    res = CliRunner().invoke(cli(), [str(a) for a in args], env=env, **kw)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a crash, not an exit: let pytest show the traceback
    return res.exit_code, " ".join(res.output.split())


# ---- the corpus ---------------------------------------------------------------------------

GOOD = "Give three tips for sleeping better."  # instruction == response: the echo scores 1.0
HUGE = "lorem ipsum " * 873_814  # 10 MiB of text
LONG = "word " * 12_000  # 60k characters: over the judge's context, under the 200k hard cap
PROMPT = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"  # OpenRLHF-style query prefix


@dataclass(frozen=True)
class Case:
    """One bad item. An error case names the field and what the message says; any other case
    is scored, with its documented handling in ``handling``."""

    id: str
    instruction: Any
    response: Any
    field: str = ""  # error case: the field the message names ...
    says: str = ""  # ... and what it says about it
    truncated: bool = False  # scored with the response cut to fit (flagged)
    verbatim: str | None = None  # scored, and the judge got exactly this text
    handling: str = ""

    @property
    def is_error(self) -> bool:
        return bool(self.field)

    @property
    def bad_field(self) -> str:
        return "instruction" if self.id.endswith("-instruction") else "response"


def _error_cases() -> list[Case]:
    values = [
        ("empty", "", "is empty"),
        ("whitespace", " \n\t ", "is empty"),
        ("none", None, "is missing (null)"),
        ("number", 42, "must be a string, got int"),
        ("list", ["one", "two"], "must be a string, got list"),
        ("lone-surrogate", "broken \ud800 text", "is not valid Unicode"),
    ]
    cases = []
    for name, value, says in values:
        for where in ("instruction", "response"):
            instr, resp = (value, GOOD) if where == "instruction" else (GOOD, value)
            fld, msg = f"field '{where}'", says
            if name == "list" and where == "instruction":
                # a list instruction is read as chat messages (documented), so the message
                # names the first message instead
                fld, msg = "messages[0]", "must be an object with 'role' and 'content'"
            cases.append(Case(f"{name}-{where}", instr, resp, field=fld, says=msg))
    return cases


TEXT = {
    "template-syntax": "Quote {response} and {{ and }} and {context} and {0} and {instruction}.",
    "cjk": "请用三句话介绍长城。",
    "arabic": "اكتب قصيدة قصيرة عن البحر.",
    "emoji": "Write a haiku 🌸🍂 about autumn 🍁✨",
}

VALUE_CASES: list[Case] = [
    *_error_cases(),
    *(
        Case(name, text, text, verbatim=text, handling="scored as is; never formatted")
        for name, text in TEXT.items()
    ),
    Case(
        "nul-char",
        "before\x00after",
        "before\x00after",
        verbatim="beforeafter",
        handling="NUL dropped (C runtimes would stop reading at it)",
    ),
    Case(
        "huge-10mb-response",
        "Write lorem ipsum.",
        HUGE,
        truncated=True,
        handling="cut to 200k characters, then to the context; truncated=True",
    ),
    Case(
        "over-context-response",
        "Write many words.",
        LONG,
        truncated=True,
        handling="cut to fit the model's context; truncated=True",
    ),
]
CASES = {c.id: c for c in VALUE_CASES}


@dataclass
class Seen:
    """What one entry point reported for one item."""

    reward: float | None
    error: str | None = None  # None where the entry point reports no message
    failed: bool = False
    truncated: bool | None = None
    status: int = 200


@dataclass
class Run:
    """One batch through one entry point: every case between good items."""

    seen: dict[str, Seen]
    goods: list[Seen]
    n_in: int
    n_out: int
    where: dict[str, str] = field(default_factory=dict)  # how the error must name the item
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> why not expressible
    records: list[dict[str, Any]] = field(default_factory=list)  # file outputs, as written
    line_of: dict[str, int] = field(default_factory=dict)  # file inputs: id -> line number
    ids: list[str] = field(default_factory=list)  # judged runs: every item id
    key: str = "id"  # judged runs: the record field holding the item id
    input: Path | None = None  # file runs: the input and the output file
    output: Path | None = None
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # built right after the run: keep what the judge saw before the next run clears it
        self.prompts = [m["content"] for req in CALLS for m in req.messages]

    def judge_saw(self, text: str) -> bool:
        return any(text in p for p in self.prompts)


def interleave(cases: list[Case]) -> list[tuple[str, Any, Any]]:
    """(id, instruction, response) with a good item before, between and after the cases."""
    rows: list[tuple[str, Any, Any]] = []
    for i, c in enumerate(cases):
        rows.append((f"good-{i}", GOOD, GOOD))
        rows.append((c.id, c.instruction, c.response))
    rows.append((f"good-{len(cases)}", GOOD, GOOD))
    return rows


# ---- entry points: Python API ---------------------------------------------------------------


def _api_run(results: list[Any], rows: list[tuple[str, Any, Any]]) -> Run:
    seen, goods, where = {}, [], {}
    for i, ((item_id, _, _), r) in enumerate(zip(rows, results)):
        s = Seen(r.reward, r.error, r.error is not None, r.truncated)
        if item_id.startswith("good-"):
            goods.append(s)
        else:
            seen[item_id], where[item_id] = s, f"item {i}:"
    return Run(seen, goods, len(rows), len(results), where)


@pytest.fixture(scope="module")
def run_api_sync() -> Run:
    CALLS.clear()
    rows = interleave(VALUE_CASES)
    with judge_reward() as rm:
        results = rm.score([r[1] for r in rows], [r[2] for r in rows])
    return _api_run(results, rows)


@pytest.fixture(scope="module")
def run_api_async() -> Run:
    CALLS.clear()
    rows = interleave(VALUE_CASES)

    async def main() -> list[Any]:
        async with judge_reward() as rm:
            return await rm.ascore([r[1] for r in rows], [r[2] for r in rows])

    return _api_run(asyncio.run(main()), rows)


# ---- entry points: fliprm score (JSONL, CSV) -------------------------------------------------

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class FileCase:
    """A bad line: raw bytes in a JSONL or CSV file (None: not expressible in that format)."""

    id: str
    jsonl: bytes | None
    csv: bytes | None
    jsonl_says: str = ""
    csv_says: str = ""  # empty: scored (documented handling)


FILE_CASES = [
    FileCase(
        "invalid-utf8",
        b'{"id": "invalid-utf8", "instruction": "x", "response": "caf\xe9 \xff"}',
        b"invalid-utf8,x,caf\xe9 \xff",
        "invalid UTF-8 at byte",
        "invalid UTF-8 in column 'response'",
    ),
    FileCase(
        # a raw control byte is not JSON (the escaped \u0000 is the nul-char value case); a CSV
        # cell may hold it and the NUL is dropped like any other
        "raw-nul-byte",
        b'{"id": "raw-nul-byte", "instruction": "x", "response": "a\x00b"}',
        b"raw-nul-byte,x,a\x00b",
        "broken JSON",
        "",
    ),
    FileCase(
        "broken-line",
        b'{"id": "broken-line", "instruction": "x", "resp',
        b"broken-line,x,y,one cell too many",
        "broken JSON",
        "more cells than header columns",
    ),
    FileCase(
        "missing-field",
        b'{"id": "missing-field", "instruction": "x"}',
        b"missing-field,x",
        "field 'response' is missing",
        "field 'response' is missing (null)",
    ),
    FileCase("not-an-object", b'["not", "an", "object"]', None, "expected a JSON object, got list"),
    FileCase(
        "duplicate-id",
        b'{"id": "good-0", "instruction": "x", "response": "y"}',
        b"good-0,x,y",
        "duplicate id 'good-0'",
        "duplicate id 'good-0'",
    ),
]

#: CSV cells are untyped text; what a typed case becomes there
CSV_SKIP = {
    "none-instruction": "a CSV cell cannot be null (a short row is the missing-field case)",
    "none-response": "a CSV cell cannot be null (a short row is the missing-field case)",
    "list-instruction": "a CSV cell cannot hold a list",
    "list-response": "a CSV cell cannot hold a list",
    "lone-surrogate-instruction": "file bytes cannot hold a lone surrogate (see invalid-utf8)",
    "lone-surrogate-response": "file bytes cannot hold a lone surrogate (see invalid-utf8)",
}
CSV_AS_TEXT = {"number-instruction", "number-response"}  # the cell is the text "42": scored


def _score_file(path: Path, out: Path) -> tuple[int, str]:
    CALLS.clear()
    args = ["score", path, "-o", out, "--backend", "fake", "--no-cache"]
    tpl = path.parent / "tpl"
    tpl.mkdir(exist_ok=True)
    (tpl / "system.txt").write_text(ECHO.system, encoding="utf-8")
    (tpl / "user.txt").write_text(ECHO.user, encoding="utf-8")
    return invoke(
        [*args, "--system-template", tpl / "system.txt", "--user-template", tpl / "user.txt"]
    )


def _file_run(
    inp: Path, out: Path, line_of: dict[str, int], n_in: int, code: int, skipped: dict[str, str]
) -> Run:
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_line = {r["line"]: r for r in recs}
    seen, goods, where = {}, [], {}
    for item_id, n in line_of.items():
        r = by_line.get(n)
        s = (
            Seen(None, "NO OUTPUT LINE", True)
            if r is None
            else Seen(r["reward"], r["error"], r["error"] is not None, r.get("truncated"))
        )
        if item_id.startswith("good-"):
            goods.append(s)
        else:
            seen[item_id], where[item_id] = s, f"line {n}"
    # exit code 1: some items failed (by design here), never 2 (usage) or a crash
    assert code == 1, f"exit code {code}"
    return Run(
        seen,
        goods,
        n_in,
        len(recs),
        where,
        skipped,
        records=recs,
        line_of=line_of,
        input=inp,
        output=out,
    )


@pytest.fixture(scope="module")
def run_cli_score_jsonl(tmp_path_factory: pytest.TempPathFactory, scripted_cli: None) -> Run:
    d = tmp_path_factory.mktemp("jsonl")
    rows = interleave(VALUE_CASES)
    lines: list[tuple[str, bytes]] = []
    for item_id, instr, resp in rows:
        obj = {"id": item_id, "instruction": instr, "response": resp}
        lines.append((item_id, json.dumps(obj).encode()))  # ASCII escapes: \ud800 stays a surrogate
    lines += [(fc.id, fc.jsonl) for fc in FILE_CASES if fc.jsonl is not None]
    # Windows tools start UTF-8 files with a BOM: line 1 must still be read
    data = BOM + b"\n".join(raw for _, raw in lines) + b"\n"
    (d / "in.jsonl").write_bytes(data)
    code, _ = _score_file(d / "in.jsonl", d / "out.jsonl")
    line_of = {item_id: n for n, (item_id, _) in enumerate(lines, start=1)}
    return _file_run(d / "in.jsonl", d / "out.jsonl", line_of, len(lines), code, {})


@pytest.fixture(scope="module")
def run_cli_score_csv(tmp_path_factory: pytest.TempPathFactory, scripted_cli: None) -> Run:
    d = tmp_path_factory.mktemp("csv")
    cases = [c for c in VALUE_CASES if c.id not in CSV_SKIP]
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    lines: list[tuple[str, bytes]] = []
    for item_id, instr, resp in interleave(cases):
        buf.seek(0)
        buf.truncate()
        w.writerow([item_id, instr, resp])
        lines.append((item_id, buf.getvalue().rstrip("\n").encode("utf-8")))
    lines += [(fc.id, fc.csv) for fc in FILE_CASES if fc.csv is not None]
    data = BOM + b"id,instruction,response\n" + b"\n".join(raw for _, raw in lines) + b"\n"
    (d / "in.csv").write_bytes(data)
    code, _ = _score_file(d / "in.csv", d / "out.jsonl")
    line_of = {item_id: n for n, (item_id, _) in enumerate(lines, start=2)}
    return _file_run(d / "in.csv", d / "out.jsonl", line_of, len(lines), code, dict(CSV_SKIP))


# ---- entry points: the server ----------------------------------------------------------------


def _post_all(app: Any, calls: list[tuple[str, Any]]) -> list[httpx.Response]:
    """POST each (path, body) to the app in-process, inside its lifespan (the batcher runs)."""

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
                # ASCII escapes, as json.dumps writes them: httpx's own encoder fails on "\ud800"
                hdr = {"content-type": "application/json"}
                return [
                    await c.post(path, content=json.dumps(body), headers=hdr)
                    for path, body in calls
                ]

    return asyncio.run(main())


def server_app(**options: Any) -> Any:
    from fliprm.server import create_app

    return create_app(judge_reward(), **options)


@pytest.fixture(scope="module")
def run_server_score() -> Run:
    CALLS.clear()
    rows = interleave(VALUE_CASES)
    items = [{"id": i, "instruction": instr, "response": resp} for i, instr, resp in rows]
    (r,) = _post_all(server_app(), [("/v1/score", {"items": items})])
    assert r.status_code == 200, r.text[:500]
    results = r.json()["results"]
    seen, goods, where = {}, [], {}
    for i, ((item_id, _, _), res) in enumerate(zip(rows, results)):
        assert res["id"] == item_id  # ids come back on the right results
        s = Seen(res["reward"], res["error"], res["error"] is not None, res["truncated"])
        if item_id.startswith("good-"):
            goods.append(s)
        else:
            seen[item_id], where[item_id] = s, f"item {i}:"
    return Run(seen, goods, len(rows), len(results), where)


#: OpenRLHF sends the response inside a query *string*: a typed value cannot be one
NOT_A_QUERY = {"none-response", "number-response", "list-response"}


def _rlhf_payload(rows: list[tuple[str, Any, Any]]) -> dict[str, Any]:
    return {
        "query": [PROMPT + resp + "<|im_end|>" for _, _, resp in rows],
        "prompts": [PROMPT] * len(rows),
        "labels": [instr for _, instr, _ in rows],
    }


@pytest.fixture(scope="module")
def run_server_get_reward() -> Run:
    CALLS.clear()
    cases = [c for c in VALUE_CASES if c.id not in NOT_A_QUERY]
    rows = interleave(cases)
    typed = [c for c in VALUE_CASES if c.id in NOT_A_QUERY]
    calls = [("/get_reward", _rlhf_payload(rows))]
    # each typed query in its own request, after a good one: the schema refuses the request
    calls += [
        (
            "/get_reward",
            {"query": [PROMPT + GOOD, c.response], "prompts": [PROMPT] * 2, "labels": [GOOD, GOOD]},
        )
        for c in typed
    ]
    main, *rejected = _post_all(server_app(), calls)
    assert main.status_code == 200, main.text[:500]
    out = main.json()
    seen, goods = {}, []
    for (item_id, _, _), reward, failed in zip(
        rows, out["rewards"], out["extra_logs"]["flip_failed"]
    ):
        s = Seen(reward, None, failed == 1.0)
        if item_id.startswith("good-"):
            goods.append(s)
        else:
            seen[item_id] = s
    for c, r in zip(typed, rejected):
        seen[c.id] = Seen(None, r.text, True, status=r.status_code)
    return Run(seen, goods, len(rows), len(out["rewards"]))


# ---- entry points: the RL adapters -----------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_judge() -> Iterator[None]:
    set_reward(judge_reward())
    yield
    set_reward(None)


def _adapter_run(rows: list[tuple[str, Any, Any]], values: list[Seen]) -> Run:
    seen, goods = {}, []
    for (item_id, _, _), s in zip(rows, values):
        (goods.append(s) if item_id.startswith("good-") else seen.__setitem__(item_id, s))
    return Run(seen, goods, len(rows), len(values))


@pytest.fixture(scope="module")
def run_trl(adapter_judge: None) -> Run:
    from fliprm.integrations.trl import flip_reward

    CALLS.clear()
    rows = interleave(VALUE_CASES)
    out = asyncio.run(flip_reward(prompts=[r[1] for r in rows], completions=[r[2] for r in rows]))
    return _adapter_run(rows, [Seen(x, None, x is None) for x in out])


@pytest.fixture(scope="module")
def run_verl(adapter_judge: None) -> Run:
    from fliprm.integrations.verl import compute_score_batch

    CALLS.clear()
    rows = interleave(VALUE_CASES)
    out = compute_score_batch(["src"] * len(rows), [r[2] for r in rows], [r[1] for r in rows])
    return _adapter_run(rows, [Seen(d["score"], None, d["flip_failed"] == 1.0) for d in out])


@pytest.fixture(scope="module")
def run_openrlhf(adapter_judge: None) -> Run:
    from fliprm.integrations.openrlhf import reward_func

    CALLS.clear()
    rows = interleave(VALUE_CASES)
    # a typed "response" goes in as the query itself: the adapter must not crash on it
    queries = [PROMPT + r + "<|im_end|>" if isinstance(r, str) else r for _, _, r in rows]
    out = reward_func(queries, [PROMPT] * len(rows), [r[1] for r in rows])
    rewards = [float(x) for x in out["rewards"]]
    failed = [float(x) == 1.0 for x in out["extra_logs"]["flip_failed"]]
    return _adapter_run(rows, [Seen(r, None, f) for r, f in zip(rewards, failed)])


@pytest.fixture(scope="module")
def run_open_instruct(adapter_judge: None) -> Run:
    from fliprm.integrations.open_instruct import FlipVerifier

    CALLS.clear()
    rows = interleave(VALUE_CASES)
    verifier = FlipVerifier()
    values = []
    for _, instr, resp in rows:
        v = verifier([], resp, instr)
        failed = (v.reasoning or "").startswith("flip failed")
        values.append(Seen(v.score, v.reasoning if failed else None, failed))
    run = _adapter_run(rows, values)
    # one call per sample: its message names it as the batch's only item
    run.where = {item_id: "flip failed: item 0:" for item_id in run.seen}
    return run


# ---- entry points: fliprm eval rewardbench2 and fliprm rerank --------------------------------

JUDGES = "flip,pointwise,pairwise,listwise,longest"
REJECTED = ["Bananas are yellow.", "The sea is salty."]


def _refused_at_load(entry: str, c: Case) -> bool:
    """Benchmark and rerank files are checked whole before any work (a half-judged benchmark
    is a different benchmark): a bad prompt, or a candidate that is not text, stops the run
    with exit code 2 naming the row and the field. An empty answer is a real answer: judged."""
    return c.is_error and (
        c.bad_field == "instruction" or c.id.split("-")[0] not in ("empty", "whitespace")
    )


def _rb2_row(item_id: str, prompt: Any, answer: Any) -> dict[str, Any]:
    return {"id": item_id, "prompt": prompt, "chosen": [answer], "rejected": REJECTED}


def _bon_row(item_id: str, prompt: Any, answer: Any) -> dict[str, Any]:
    return {"id": item_id, "prompt": prompt, "candidates": [answer, *REJECTED]}


def _write_rows(path: Path, rows: list[dict[str, Any]], *, bom: bool = False) -> Path:
    data = b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"
    path.write_bytes((BOM if bom else b"") + data)
    return path


def _judge_cli(entry: str, data: Path, out: Path) -> tuple[int, str]:
    CALLS.clear()
    if entry == "eval_rb2":
        return invoke(
            [
                "eval",
                "rewardbench2",
                "--data",
                data,
                "--methods",
                JUDGES,
                "--out",
                out,
                "--backend",
                "fake",
            ]
        )
    return invoke(["rerank", data, "--methods", JUDGES, "--out", out, "--backend", "fake"])


def _judged_run(entry: str, d: Path) -> Run:
    make_row = _rb2_row if entry == "eval_rb2" else _bon_row
    cases = [c for c in VALUE_CASES if not _refused_at_load(entry, c)]
    rows = interleave(cases)
    data = _write_rows(d / "data.jsonl", [make_row(*r) for r in rows], bom=True)
    code, output = _judge_cli(entry, data, d / "out")
    if entry == "eval_rb2":
        recs = [json.loads(x) for x in (d / "out" / "records.jsonl").read_text().splitlines()]
        key = "item_id"
    else:
        recs = [
            json.loads(x)
            for m in JUDGES.split(",")
            for x in (d / "out" / f"{m}.jsonl").read_text().splitlines()
        ]
        key = "id"
    # the prompted baselines cannot fit an answer over the context in their prompt: those
    # judge calls fail, their records are error records and the exit code is 1 (as for score);
    # FLIP truncates, so it never fails here; never 2 (usage) or a crash
    failed = {(r["method"], r[key]) for r in recs if r.get("error")}
    assert {i for _, i in failed} <= {"huge-10mb-response", "over-context-response"}, failed
    assert not {m for m, _ in failed} & {"flip", "longest"}, failed
    assert code == (1 if failed else 0) and "Traceback" not in output, output[-2000:]
    by = {(r["method"], r[key]): r for r in recs}
    seen, goods = {}, []
    for item_id, _, _ in rows:
        flip = by.get(("flip", item_id))
        if flip is None:
            s = Seen(None, "NO RECORD", True)
        else:
            mine = [e for e in flip["errors"] if e.startswith("candidate 0:")]
            s = Seen(flip["scores"][0], mine[0] if mine else None, bool(mine))
        (goods.append(s) if item_id.startswith("good-") else seen.__setitem__(item_id, s))
    return Run(
        seen,
        goods,
        len(rows) * len(JUDGES.split(",")),
        len(recs),
        {c.id: "candidate 0:" for c in cases},
        records=recs,
        ids=[r[0] for r in rows],
        key=key,
    )


@pytest.fixture(scope="module")
def run_eval_rb2(tmp_path_factory: pytest.TempPathFactory, scripted_cli: None) -> Run:
    return _judged_run("eval_rb2", tmp_path_factory.mktemp("rb2"))


@pytest.fixture(scope="module")
def run_rerank(tmp_path_factory: pytest.TempPathFactory, scripted_cli: None) -> Run:
    return _judged_run("rerank", tmp_path_factory.mktemp("bon"))


# ---- the matrix --------------------------------------------------------------------------------

ENTRIES = [
    "api_sync",
    "api_async",
    "cli_score_jsonl",
    "cli_score_csv",
    "server_score",
    "server_get_reward",
    "trl",
    "verl",
    "openrlhf",
    "open_instruct",
    "eval_rb2",
    "rerank",
]
ADAPTERS = {"trl", "verl", "openrlhf", "open_instruct", "server_get_reward"}
#: entry points whose output has no place for a message (a number per sample, plus numeric
#: logs): they say only that the item failed. Every other entry point must name the field.
SILENT = {"trl", "verl", "openrlhf", "server_get_reward"}
#: entry points whose output has no ``truncated`` flag; every other one must set it
NO_TRUNCATED_FLAG = SILENT | {"open_instruct", "eval_rb2", "rerank"}
#: what each entry point names a field in its messages
FIELD_NAMES = {
    "eval_rb2": {"instruction": "prompt", "response": "chosen[0]"},
    "rerank": {"instruction": "prompt", "response": "candidates[0]"},
}


@pytest.fixture
def entry(request: pytest.FixtureRequest) -> str:
    """The entry point a shared test runs on: the ``ENTRY`` of the module that imported it."""
    return request.module.ENTRY


def check_refused_at_load(entry: str, c: Case, tmp_path: Path) -> None:
    make_row = _rb2_row if entry == "eval_rb2" else _bon_row
    data = _write_rows(
        tmp_path / "data.jsonl",
        [make_row("ok", GOOD, GOOD), make_row(c.id, c.instruction, c.response)],
    )
    code, output = _judge_cli(entry, data, tmp_path / "out")
    assert code == 2, output
    assert "Traceback" not in output and "row 2" in output, output
    name = FIELD_NAMES[entry][c.bad_field]
    typed = c.id.split("-")[0] in ("none", "number", "list")
    if c.bad_field == "instruction" and typed:
        want = (
            "'prompt' must be a string or a list of chat messages"
            if entry == "eval_rb2"
            else "needs a string 'prompt'"
        )
    else:
        want = f"field '{name}' {c.says}"
    assert want in output, output
    assert not CALLS, "nothing may be judged before the whole file is checked"
    assert not any((tmp_path / "out").glob("*.jsonl")), "no half-written records"


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_bad_value(entry: str, case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if entry in ("eval_rb2", "rerank") and _refused_at_load(entry, case):
        request.getfixturevalue("scripted_cli")
        check_refused_at_load(entry, case, tmp_path)
        return
    run: Run = request.getfixturevalue(f"run_{entry}")
    if case.id in run.skipped:
        pytest.skip(run.skipped[case.id])
    s = run.seen[case.id]
    empty_answer = case.id in ("empty-response", "whitespace-response")

    if entry == "server_get_reward" and case.id in NOT_A_QUERY:
        # OpenRLHF's wire format: queries are strings; 422 names the item and the field
        assert s.status == 422 and s.error is not None
        assert json.loads(s.error)["detail"][0]["loc"] == ["body", "query", 1]
        return
    if entry in ADAPTERS and empty_answer:
        # documented: an empty policy output is a real (bad) answer, scored 0 without a call
        assert s.reward == 0.0 and not s.failed
        return
    if entry in ("eval_rb2", "rerank") and empty_answer:
        # FLIP cannot infer anything from an empty answer: it ranks last, named in the record
        assert s.reward is None and s.error is not None
        assert f"candidate 0: field 'response' {case.says}" in s.error
        return
    if entry == "cli_score_csv" and case.id in CSV_AS_TEXT:
        assert not s.failed and s.reward is not None  # CSV cells are text: "42" is scored
        return

    if case.is_error:
        assert s.failed, f"{case.id} was scored: {s}"
        if entry == "trl":
            assert s.reward is None  # TRL skips None rewards
        elif entry in ADAPTERS:
            assert s.reward == 0.0  # failure_score: these frameworks need a number
        else:
            assert s.reward is None
        if entry in SILENT:
            assert s.error is None  # no message channel (see SILENT): the flag is all there is
            return
        assert s.error is not None, f"{entry} reported no message for {case.id}"
        assert case.field in s.error and case.says in s.error, s.error
        if case.id in run.where:  # how the entry point names the item
            assert run.where[case.id] in s.error, s.error
        return

    assert not s.failed and s.error is None, s
    assert s.reward is not None
    if case.verbatim is not None:
        if entry not in ("eval_rb2", "rerank"):
            assert s.reward == 1.0  # the echo judge gave the text back: nothing was lost
        assert run.judge_saw(case.verbatim), f"the judge never saw {case.verbatim!r} verbatim"
        assert not run.judge_saw("\x00")
    if entry in NO_TRUNCATED_FLAG:
        assert s.truncated is None  # the entry point has no such flag (see NO_TRUNCATED_FLAG)
    else:
        assert s.truncated is case.truncated, s


def test_rest_of_batch_completes_and_nothing_is_lost(
    entry: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(f"run_{entry}")
    assert run.n_out == run.n_in, f"{run.n_in} items in, {run.n_out} out"
    assert run.goods and all(g.reward is not None and not g.failed for g in run.goods), run.goods
    if entry not in ("eval_rb2", "rerank"):
        assert all(g.reward == 1.0 for g in run.goods)  # in order, each with its own result
    if entry in ("eval_rb2", "rerank"):
        keys = [(r["method"], r[run.key]) for r in run.records]  # type: ignore[attr-defined]
        assert len(keys) == len(set(keys))  # one record per (method, item)
        assert {k[1] for k in keys} == set(run.ids)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fc", FILE_CASES, ids=lambda fc: fc.id)
def test_bad_line_in_file(entry: str, fc: FileCase, request: pytest.FixtureRequest) -> None:
    says = fc.jsonl_says if entry == "cli_score_jsonl" else fc.csv_says
    if (fc.jsonl if entry == "cli_score_jsonl" else fc.csv) is None:
        pytest.skip("a CSV row is always a row of cells")
    run: Run = request.getfixturevalue(f"run_{entry}")
    line = run.line_of[fc.id]
    recs = [r for r in run.records if r["line"] == line]
    assert len(recs) == 1, recs  # exactly one output line for the bad input line
    rec = recs[0]
    if not says:
        assert rec["error"] is None and rec["reward"] is not None  # documented: scored
        return
    assert rec["reward"] is None and says in rec["error"], rec
    assert rec["error"].startswith(f"line {line}:"), rec["error"]


def test_bom_before_the_first_line_is_ignored(entry: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(f"run_{entry}")
    first = min(run.line_of.values())
    (rec,) = [r for r in run.records if r["line"] == first]
    assert rec["id"] == "good-0" and rec["reward"] == 1.0, rec


def test_rerun_after_bad_input_redoes_and_duplicates_nothing(
    entry: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run: Run = request.getfixturevalue(f"run_{entry}")
    assert run.input is not None and run.output is not None
    out = tmp_path / "out.jsonl"
    out.write_bytes(run.output.read_bytes())
    manifest = run.output.with_name(run.output.name + ".fliprm.json")
    out.with_name(out.name + ".fliprm.json").write_bytes(manifest.read_bytes())
    code, output = _score_file(run.input, out)
    # the bad lines' error records are still in the output: counted, and the exit code says so
    assert code == 1 and "Traceback" not in output, output
    assert "errors (earlier runs, still in the output)" in output, output
    assert out.read_bytes() == run.output.read_bytes()  # every line, bad ones too, is done
    assert not CALLS


# ---- whole-file problems in benchmark and rerank data ------------------------------------------

#: (id, a bad second line, what the refusal says); the first line is always a good row
JUDGED_FILE_CASES = [
    (
        "invalid-utf8",
        lambda row: json.dumps(row).encode().replace(b"Bananas", b"Ban\xffnas"),
        "line 2: invalid UTF-8 at byte",
    ),
    (
        "raw-nul-byte",
        lambda row: json.dumps(row).encode().replace(b"Bananas", b"Ban\x00nas"),
        "line 2: broken JSON",
    ),
    ("broken-line", lambda row: json.dumps(row).encode()[:30], "line 2: broken JSON"),
    ("not-an-object", lambda row: b'["a", "b"]', "line 2: expected a JSON object, got list"),
    ("missing-field", lambda row: json.dumps({"id": "m", "prompt": GOOD}).encode(), "row 2"),
    (
        "duplicate-id",
        lambda row: json.dumps({**row, "id": "ok"}).encode(),
        "row 2: duplicate id 'ok'",
    ),
]


@pytest.mark.parametrize("bad", JUDGED_FILE_CASES, ids=lambda b: b[0])
def test_bad_line_in_benchmark_or_rerank_file_stops_before_any_work(
    entry: str,
    bad: tuple[str, Callable[[dict[str, Any]], bytes], str],
    tmp_path: Path,
    scripted_cli: None,
) -> None:
    make_row = _rb2_row if entry == "eval_rb2" else _bon_row
    data = tmp_path / "data.jsonl"
    good = json.dumps(make_row("ok", GOOD, GOOD)).encode()
    data.write_bytes(good + b"\n" + bad[1](make_row("two", GOOD, GOOD)) + b"\n")
    code, output = _judge_cli(entry, data, tmp_path / "out")
    assert code == 2 and "Traceback" not in output, output
    assert str(data) in output and bad[2] in output, output
    if bad[0] == "missing-field":
        field_name = "chosen" if entry == "eval_rb2" else "candidates"
        assert f"'{field_name}'" in output, output
    assert not CALLS and not any((tmp_path / "out").glob("*.jsonl"))


# ---- faults: the output location ---------------------------------------------------------------


def _one_pair(tmp_path: Path) -> Path:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "1", "instruction": GOOD, "response": GOOD}) + "\n")
    return inp


def _blocked(tmp_path: Path) -> Path:
    """A path whose parent is a regular file: no one, root included, can create it."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return blocker / "out"


def _assert_clear_output_error(code: int, output: str, path: Path | str, why: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    assert str(path) in output and why in output, output


def test_judged_run_to_a_path_that_cannot_be_created_is_a_clear_error(
    entry: str, tmp_path: Path, scripted_cli: None
) -> None:
    make_row = _rb2_row if entry == "eval_rb2" else _bon_row
    data = _write_rows(tmp_path / "data.jsonl", [make_row("a", GOOD, GOOD)])
    out = _blocked(tmp_path)
    code, output = _judge_cli(entry, data, out)
    _assert_clear_output_error(code, output, out, "cannot write results to")


# ---- faults: fliprm eval rewardbench2 killed with SIGKILL and resumed --------------------------

_REAL_FAKE_REPLY = fake_module.scripted_reply  # captured before any test patches it

#: runs the real CLI in a child process with the scripted dry-run backend slowed down, so there
#: is time to kill it between records; plots are skipped (seconds of matplotlib, tested elsewhere)
_SLOW_CLI = """
import sys
import time
import fliprm.backends.fake as fake
import fliprm.eval.rb2_report as report

delay = float(sys.argv[1])
_reply = fake.scripted_reply
fake.scripted_reply = lambda req: (time.sleep(delay), _reply(req))[1]
report._plots = lambda summary, out_dir: []
sys.argv = ["fliprm", *sys.argv[2:]]
from fliprm.cli.main import main
main()
"""
_TIMING = {"seconds", "seconds_per_item", "meta", "plots"}


def _rb2_items(n: int) -> list[dict[str, Any]]:
    topics = ["the sea", "autumn", "a cat", "bread", "trains", "snow", "tea", "the moon"]
    return [
        {
            "id": f"q{i}",
            "subset": "Focus" if i % 2 else "Math",
            "prompt": f"Write two sentences about {topics[i % len(topics)]} (#{i}).",
            "chosen": [f"Here are two sentences about {topics[i % len(topics)]}. Number {i}."],
            "rejected": ["Bananas are yellow.", f"{i} + {i} = {3 * i}.", "No."],
        }
        for i in range(n)
    ]


def _without_timing(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_timing(v) for k, v in x.items() if k not in _TIMING}
    if isinstance(x, list):
        return [_without_timing(v) for v in x]
    return x


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
