"""Issue 21: `eval rewardbench2` and `rerank` must not report success after failing.

Failed judge calls are error records (counted, printed, exit code 1, redone by
--retry-errors), accuracies are over the scored items only, and the engine flags (--cache,
--max-retries, --total-timeout) reach every judge (the one Engine factory: test_engine.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fliprm.backends.fake import FakeBackend, scripted_reply
from fliprm.cli import _eval_common as eval_common_cli
from fliprm.cli import eval as eval_cli
from fliprm.cli import rerank as rerank_cli
from fliprm.engine import Engine
from fliprm.errors import BackendUnavailable
from fliprm.records import read_records
from helpers_fliprm import FIXTURES as FIX

RB2 = FIX / "rb2_tiny.jsonl"  # default subsets: 2 Focus + 1 Math items, 4 answers each
BON = FIX / "bon_tiny.jsonl"  # 3 rows, 4 candidates each


def _app() -> typer.Typer:
    app = typer.Typer()
    eval_cli.register(app)
    rerank_cli.register(app)
    return app


def _run(args: list[str]):
    return CliRunner().invoke(_app(), args)


class Switch:
    """A backend that refuses every call while ``dead`` and answers like ``-b fake`` after."""

    def __init__(self, dead: bool = True, **kw) -> None:
        self.dead = dead
        self.fb = FakeBackend(self._reply, **kw)

    def _reply(self, req):
        if self.dead:
            return BackendUnavailable("connection refused")
        return scripted_reply(req)

    @property
    def calls(self) -> int:
        return len(self.fb.calls)


@pytest.fixture
def backend(monkeypatch):
    """Install a switchable backend where the eval/rerank CLI builds its backend."""
    sw = Switch()
    monkeypatch.setattr(eval_common_cli, "build_backend", lambda config, runtime: sw.fb)
    # retries back off 0.5 s, 1 s, ...: the counts are what is tested, not the waiting
    monkeypatch.setitem(Engine.__init__.__kwdefaults__, "backoff_s", 0.0)
    return sw


def _records(path: Path) -> list[dict]:
    return [r for _, r in read_records(path)]


# ---- dead backend: error records, counted, exit 1, --retry-errors ----------------------------


def test_eval_dead_backend_exits_1_and_retry_errors_redoes_exactly_the_failed(tmp_path, backend):
    out = tmp_path / "rb2"
    args = ["eval", "rewardbench2", "--data", str(RB2), "--methods", "flip,pointwise,longest",
            "--out", str(out), "--max-retries", "0", "--no-cache"]
    res = _run(args)
    assert res.exit_code == 1, res.output  # was 0, with "accuracy 25.0%" for every judge
    assert backend.calls == 2 * 3 * 4  # flip and pointwise: 3 items x 4 answers, no retries
    recs = {(r["method"], r["item_id"]): r for r in _records(out / "records.jsonl")}
    assert len(recs) == 9
    failed = {k for k, r in recs.items() if r.get("error")}
    assert failed == {(m, i) for m in ("flip", "pointwise") for i in ("1", "2", "3")}
    assert "BackendUnavailable" in recs[("flip", "1")]["error"]
    assert recs[("pointwise", "1")]["credit"] is None  # never a 1/k tie credit
    results = json.loads((out / "results.json").read_text())
    for m in ("flip", "pointwise"):
        assert results["methods"][m]["n_failed"] == 3 and results["methods"][m]["n_scored"] == 0
        assert results["methods"][m]["accuracy"] is None  # not 25.0 over failed calls
    assert results["methods"]["longest"]["n_failed"] == 0
    assert results["methods"]["longest"]["n_scored"] == 3
    assert "3 failed" in res.output and "--retry-errors" in res.output

    # a plain rerun treats nothing as newly done and still fails: the error records remain
    backend.dead = False
    res = _run(args)
    assert res.exit_code == 1, res.output
    assert backend.calls == 24 and "3 failed" in res.output

    res = _run(args + ["--retry-errors"])
    assert res.exit_code == 0, res.output
    assert backend.calls == 24 + 24  # exactly the 6 failed (method, item) records, 4 calls each
    recs2 = _records(out / "records.jsonl")
    assert len(recs2) == 9 and not any(r.get("error") for r in recs2)
    assert len({r["id"] for r in recs2}) == 9  # one record per (method, run, item)
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["pointwise"]["n_scored"] == 3
    assert results["methods"]["pointwise"]["n_failed"] == 0


def test_eval_retry_errors_redoes_only_the_selected_methods_and_items(tmp_path, backend):
    out = tmp_path / "rb2"
    base = ["eval", "rewardbench2", "--data", str(RB2), "--out", str(out), "--max-retries", "0",
            "--no-cache"]
    assert _run([*base, "--methods", "pointwise,listwise"]).exit_code == 1
    assert backend.calls == 3 * 4 + 3  # pointwise: 4 calls per item, listwise: 1
    backend.dead = False
    res = _run([*base, "--methods", "pointwise", "--subsets", "Math", "--retry-errors"])
    assert res.exit_code == 0, res.output  # this selection (pointwise on Math) is whole now
    assert backend.calls == 15 + 4
    recs = {(r["method"], r["item_id"]): r for r in _records(out / "records.jsonl")}
    assert len(recs) == 6  # the failures outside the selection are kept, not dropped unredone
    assert not recs[("pointwise", "3")].get("error")
    assert all(recs[k].get("error") for k in recs if k != ("pointwise", "3"))
    res = _run([*base, "--methods", "pointwise,listwise", "--retry-errors"])
    assert res.exit_code == 0 and backend.calls == 19 + 2 * 4 + 3


def test_eval_partly_failed_item_is_an_error_record_and_left_out_of_accuracy(tmp_path, monkeypatch):
    # item 1 answers; every call about item 2 fails: accuracy is item 1's, with 1 failed
    def reply(req):
        text = req.messages[-1]["content"]
        if "haiku" in text:
            return BackendUnavailable("connection reset")
        return json.dumps({"REASONING": "", "SCORE": 9 if "Paris" in text else 2})

    fb = FakeBackend(reply)
    monkeypatch.setattr(eval_common_cli, "build_backend", lambda config, runtime: fb)
    out = tmp_path / "rb2"
    res = _run(["eval", "rewardbench2", "--data", str(RB2), "--subsets", "Focus",
                "--methods", "pointwise", "--out", str(out), "--max-retries", "0", "--no-cache"])
    assert res.exit_code == 1, res.output
    m = json.loads((out / "results.json").read_text())["methods"]["pointwise"]
    assert m["n_scored"] == 1 and m["n_failed"] == 1
    assert m["accuracy"] == 1.0  # item 1 won outright; item 2 is not a 0.25 tie in the mean


def test_rerank_dead_backend_exits_1_and_retry_errors_redoes_exactly_the_failed(tmp_path, backend):
    out = tmp_path / "bon"
    args = ["rerank", str(BON), "--label-field", "preference", "--methods", "flip,pointwise",
            "--out", str(out), "--max-retries", "0", "--no-cache"]
    res = _run(args)
    assert res.exit_code == 1, res.output  # was 0, with "mean label 1.004"
    assert backend.calls == 2 * 3 * 4
    for m in ("flip", "pointwise"):
        recs = _records(out / f"{m}.jsonl")
        assert len(recs) == 3 and all("BackendUnavailable" in r["error"] for r in recs)
        assert all(r["pick"] is None for r in recs)
    s = json.loads((out / "bon_results.json").read_text())
    assert s["methods"]["flip"]["n"] == 0 and s["methods"]["flip"]["n_failed"] == 3
    assert s["methods"]["flip"]["mean_label"] is None
    assert "3 failed" in res.output and "--retry-errors" in res.output

    backend.dead = False
    res = _run(args)
    assert res.exit_code == 1 and backend.calls == 24

    res = _run(args + ["--retry-errors"])
    assert res.exit_code == 0, res.output
    assert backend.calls == 48
    for m in ("flip", "pointwise"):
        recs = _records(out / f"{m}.jsonl")
        assert len(recs) == 3 and not any(r.get("error") for r in recs)
    s = json.loads((out / "bon_results.json").read_text())
    assert s["methods"]["pointwise"]["n"] == 3 and s["methods"]["pointwise"]["n_failed"] == 0


def test_rerank_without_labels_still_counts_failures(tmp_path, backend):
    res = _run(["rerank", str(BON), "--methods", "pointwise", "--out", str(tmp_path),
                "--max-retries", "0", "--no-cache"])
    assert res.exit_code == 1 and "3 failed" in res.output


def test_eval_against_a_closed_port_is_one_error_before_any_record(tmp_path):
    # the judge's server is asked what it serves before anything is recorded (its identity is
    # part of the settings): an unreachable one stops the run at once, never a "25%" result
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    out = tmp_path / "rb2"
    res = _run(["eval", "rewardbench2", "--data", str(RB2), "--subsets", "Math",
                "--methods", "pointwise", "-b", "openai:m", "--base-url",
                f"http://127.0.0.1:{port}/v1", "--max-retries", "0", "--no-cache",
                "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert f"127.0.0.1:{port}" in res.output and "ConnectError" in res.output
    assert "accuracy" not in res.output


# ---- --max-retries, --total-timeout, --cache reach the judges ---------------------------------


@pytest.mark.parametrize("retries", [0, 2])
def test_eval_max_retries_takes_effect(tmp_path, backend, retries):
    res = _run(["eval", "rewardbench2", "--data", str(RB2), "--subsets", "Math", "--methods",
                "pointwise", "--out", str(tmp_path), "--max-retries", str(retries), "--no-cache"])
    assert res.exit_code == 1
    assert backend.calls == 4 * (1 + retries)  # was 4 x 4 whatever the flag said


@pytest.mark.parametrize("retries", [0, 2])
def test_rerank_max_retries_takes_effect(tmp_path, backend, retries):
    res = _run(["rerank", str(BON), "--limit", "1", "--methods", "flip", "--out", str(tmp_path),
                "--max-retries", str(retries), "--no-cache"])
    assert res.exit_code == 1
    assert backend.calls == 4 * (1 + retries)


@pytest.mark.parametrize("command", ["eval", "rerank"])
def test_total_timeout_takes_effect(tmp_path, monkeypatch, command):
    slow = FakeBackend(delay_s=2.0)
    monkeypatch.setattr(eval_common_cli, "build_backend", lambda config, runtime: slow)
    args = (["eval", "rewardbench2", "--data", str(RB2), "--subsets", "Math"] if command == "eval"
            else ["rerank", str(BON), "--limit", "1"])
    t0 = time.perf_counter()
    res = _run([*args, "--methods", "pointwise", "--out", str(tmp_path), "--total-timeout",
                "0.2", "--max-retries", "0", "--no-cache"])
    assert time.perf_counter() - t0 < 1.8
    assert res.exit_code == 1, res.output
    path = tmp_path / ("records.jsonl" if command == "eval" else "pointwise.jsonl")
    (rec,) = _records(path)
    assert "BackendTimeout" in rec["error"]


@pytest.mark.parametrize("command", ["eval", "rerank"])
def test_cache_takes_effect(tmp_path, backend, command):
    backend.dead = False
    cache = tmp_path / "c.sqlite"
    args = (["eval", "rewardbench2", "--data", str(RB2)] if command == "eval"
            else ["rerank", str(BON)])
    res = _run([*args, "--methods", "flip,pointwise", "--out", str(tmp_path / "a"),
                "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    assert cache.is_file() and backend.calls == 24
    # a fresh output (nothing to resume) with the same cache: every answer comes from the cache
    res = _run([*args, "--methods", "flip,pointwise", "--out", str(tmp_path / "b"),
                "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    assert backend.calls == 24


# ---- the report layout shows the failures (merge of the report/provenance work) ------------


def _md_rows(report: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    lines = report.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in lines[i:] if line.startswith("|")]
    end = next((k for k, line in enumerate(lines[i:]) if not line.startswith("|")), None)
    cells = cells[: end] if end is not None else cells
    return cells[0], cells[2:]


def test_eval_report_and_metrics_count_the_failed_records(tmp_path, backend):
    out, metrics = tmp_path / "rb2", tmp_path / "m.jsonl"
    res = _run(["eval", "rewardbench2", "--data", str(RB2), "--methods", "pointwise,longest",
                "--out", str(out), "--max-retries", "0", "--no-cache",
                "--metrics-jsonl", str(metrics)])
    assert res.exit_code == 1, res.output
    report = (out / "report.md").read_text()
    head, rows = _md_rows(report, "| method | overall")
    assert head[-2:] == ["scored", "failed"]
    by = {r[0]: dict(zip(head, r)) for r in rows}
    assert (by["longest"]["scored"], by["longest"]["failed"]) == ("3", "0")
    assert (by["pointwise"]["scored"], by["pointwise"]["failed"]) == ("0", "3")
    assert "**Failed judge calls:** pointwise 3 records" in report
    final = json.loads(metrics.read_text().splitlines()[-1])
    assert final["event"] == "final" and final["done"] == 6 and final["errors"] == 3


def test_rerank_report_and_metrics_count_the_failed_rows(tmp_path, backend):
    out, metrics = tmp_path / "bon", tmp_path / "m.jsonl"
    res = _run(["rerank", str(BON), "--label-field", "preference", "--methods",
                "pointwise,longest", "--out", str(out), "--max-retries", "0", "--no-cache",
                "--metrics-jsonl", str(metrics)])
    assert res.exit_code == 1, res.output
    report = (out / "bon_report.md").read_text()
    head, rows = _md_rows(report, "| method | mean label")
    assert head[2:4] == ["rows", "failed"]
    by = {r[0]: r for r in rows}
    assert by["longest"][2:4] == ["3", "0"] and by["pointwise"][2:4] == ["0", "3"]
    assert "**Failed judge calls:** pointwise 3 records" in report
    final = json.loads(metrics.read_text().splitlines()[-1])
    assert final["done"] == 6 and final["errors"] == 3


def test_leaderboard_counts_the_failed_records(tmp_path, backend):
    rb2, bon = tmp_path / "rb2", tmp_path / "bon"
    _run(["eval", "rewardbench2", "--data", str(RB2), "--methods", "pointwise,longest",
          "--out", str(rb2), "--max-retries", "0", "--no-cache"])
    _run(["rerank", str(BON), "--label-field", "preference", "--methods", "pointwise,longest",
          "--out", str(bon), "--max-retries", "0", "--no-cache"])
    res = _run(["eval", "report", str(rb2), str(bon)])
    assert res.exit_code == 0, res.output
    head, rows = _md_rows(res.output, "| # | method | data | accuracy")
    assert head[-1] == "failed"
    assert {r[1]: r[-1] for r in rows} == {"longest": "0", "pointwise": "3"}
    head, rows = _md_rows(res.output, "| # | method | data | mean label")
    assert head[-1] == "failed"
    assert {r[1]: r[-1] for r in rows} == {"longest": "0", "pointwise": "3"}


def test_eval_and_rerank_start_from_the_librarys_default_reward():
    """Issue 20: every entry point starts from one default; eval's and rerank's default judge
    is the one that scores with RewardConfig() (pmi + echo guard), F1 is `--methods flip`."""
    import inspect

    from fliprm.cli import eval as eval_cli
    from fliprm.cli import rerank as rerank_cli
    from fliprm.cli._eval_common import DEFAULT_JUDGE
    from fliprm.config import RewardConfig
    from fliprm.registry import method_spec

    assert DEFAULT_JUDGE == method_spec(RewardConfig().method).judge
    rerank_default = inspect.signature(rerank_cli.rerank).parameters["methods"].default
    eval_default = inspect.signature(eval_cli.rewardbench2).parameters["methods"].default
    assert rerank_default == DEFAULT_JUDGE
    assert eval_default.split(",")[0] == DEFAULT_JUDGE
