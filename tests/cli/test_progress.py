"""One progress display for score, eval and rerank; quiet off a terminal; --metrics-jsonl."""

from __future__ import annotations

import io
import json
from pathlib import Path

import typer
from rich.console import Console
from typer.testing import CliRunner

from fliprm.cli import eval as eval_cli
from fliprm.cli import rerank as rerank_cli
from fliprm.cli import score as score_cli
from fliprm.cli._progress import RunProgress
from helpers_fliprm import FIXTURES as FIX


def _app() -> typer.Typer:
    app = typer.Typer()
    for mod in (eval_cli, rerank_cli, score_cli):
        mod.register(app)
    return app


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_display_on_a_terminal_shows_rate_eta_and_running_value():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    with RunProgress("eval", total=4, metric="accuracy", console=console) as bar:
        bar.item(1.0)
        bar.item(0.0)
        bar.item(None, error=True)
    text = buf.getvalue()
    assert "3/4" in text and "items/s" in text and "eta" in text
    assert "accuracy 0.500" in text and "1 errors" in text


def test_no_display_off_a_terminal():
    buf = io.StringIO()
    with RunProgress("eval", total=2, console=Console(file=buf, force_terminal=False)) as bar:
        bar.item(1.0)
    assert buf.getvalue() == "" and bar.value == 1.0


def test_eval_prints_no_per_item_lines_off_a_terminal_and_streams_metrics(tmp_path):
    out, metrics = tmp_path / "rb2", tmp_path / "m.jsonl"
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--data", str(FIX / "rb2_tiny.jsonl"),
                                      "--methods", "longest", "--runs", "2", "--out", str(out),
                                      "--metrics-jsonl", str(metrics)])
    assert res.exit_code == 0, res.output
    # CliRunner's stderr is no terminal: no progress at all, the summary lines are still there
    assert "done" not in res.output and "items/s" not in res.output and "run 0]" not in res.output
    assert "longest" in res.output and "report:" in res.output
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    events = _lines(metrics)
    assert [e["event"] for e in events] == ["start", *["progress"] * len(recs), "final"]
    final = events[-1]
    assert final["done"] == final["total"] == len(recs) == 2 * 3  # 3 default-subset items, 2 runs
    credits = [r["credit"] for r in recs if r["credit"] is not None]
    assert final["metric"] == "accuracy" and final["value"] == sum(credits) / len(credits)
    assert final["eta_s"] == 0 and final["items_per_s"] > 0


def test_rerank_and_score_share_the_metrics_stream(tmp_path):
    metrics = tmp_path / "r.jsonl"
    res = CliRunner().invoke(_app(), ["rerank", str(FIX / "bon_tiny.jsonl"), "--methods", "longest",
                                      "--label-field", "preference", "--out", str(tmp_path / "bon"),
                                      "--metrics-jsonl", str(metrics)])
    assert res.exit_code == 0, res.output
    final = _lines(metrics)[-1]
    picks = _lines(tmp_path / "bon" / "longest.jsonl")
    assert final["metric"] == "mean label" and final["done"] == final["total"] == 3
    assert final["value"] == sum(p["picked_label"] for p in picks) / 3

    inp = tmp_path / "pairs.jsonl"
    inp.write_text(json.dumps({"instruction": "say hi", "response": "hi"}) + "\n")
    metrics = tmp_path / "s.jsonl"
    res = CliRunner().invoke(_app(), ["score", str(inp), "-o", str(tmp_path / "o.jsonl"), "-b",
                                      "fake", "--no-cache", "--method", "f1",
                                      "--metrics-jsonl", str(metrics)])
    assert res.exit_code == 0, res.output
    (rec,) = _lines(tmp_path / "o.jsonl")
    final = _lines(metrics)[-1]
    assert final["metric"] == "mean reward" and final["done"] == final["total"] == 1
    assert final["value"] == rec["reward"]
    assert "scoring" not in res.output.split("fliprm score")[0]  # no bar before the summary
