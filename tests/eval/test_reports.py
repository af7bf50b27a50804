"""Reports a researcher can publish (issue 23): provenance header, dry-run label on the first
line, settings as JSON, spread across runs, rows best first, bold only the best per column,
plots with n, intervals, visible zero bars and the data set's name."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fliprm.cli import eval as eval_cli
from fliprm.cli import rerank as rerank_cli
from fliprm.eval.bon_report import write_bon_report
from fliprm.eval.provenance import DRY_RUN, run_info
from fliprm.eval.rb2_report import write_report
from helpers_fliprm import FIXTURES as FIX

HAS_PLOTS = importlib.util.find_spec("matplotlib") is not None
FIRST = f"**{DRY_RUN}.**"


def _app() -> typer.Typer:
    app = typer.Typer()
    eval_cli.register(app)
    rerank_cli.register(app)
    return app


def _rec(method: str, item: str, sub: str, credit: float, run: int = 0) -> dict:
    return {"id": f"{method}|{run}|{item}", "method": method, "run": run, "item_id": item,
            "subset": sub, "credit": credit, "tie": False, "parse_failures": 0, "calls": 1,
            "prompt_tokens": 10, "completion_tokens": 2, "seconds": 1.0, "errors": [],
            "mean_words": 20, "scores": [], "num_correct": 1}


def _table_rows(report: str, heading: str) -> list[list[str]]:
    block = report.split(heading, 1)[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_report_rows_best_first_bold_only_best_per_column_and_spread(tmp_path):
    # a: run 0 all right, run 1 half right -> 0.75 +- 0.354 (0.5-1.0); b: 0.5 overall, best on B
    recs = [_rec("a", "1", "A", 1.0, 0), _rec("a", "2", "B", 1.0, 0),
            _rec("a", "1", "A", 1.0, 1), _rec("a", "2", "B", 0.0, 1),
            _rec("b", "1", "A", 0.0, 0), _rec("b", "2", "B", 1.0, 0),
            _rec("b", "1", "A", 0.0, 1), _rec("b", "2", "B", 1.0, 1),
            _rec("c", "1", "A", 1.0, 0), _rec("c", "2", "B", 0.0, 0),
            _rec("c", "1", "A", 1.0, 1), _rec("c", "2", "B", 0.0, 1)]
    info = run_info(backend="openai", seconds=12.34, command=["fliprm", "eval", "x"])
    s = write_report(recs, tmp_path, meta={"settings": {"a": {"t": 1}}}, run=info, dataset="mine")
    assert list(s["methods"]) == ["a", "b", "c"]  # 0.75 first; b and c tie at 0.5
    sp = s["methods"]["a"]["runs_spread"]
    assert sp["per_run"] == [1.0, 0.5] and sp["mean"] == 0.75
    assert sp["std"] == pytest.approx(0.353553, abs=1e-6) and (sp["min"], sp["max"]) == (0.5, 1.0)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# mine: evaluation with RewardBench 2 scoring")  # not a dry run
    rows = _table_rows(report, "## Accuracy")
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert rows[0][1].startswith("**75.0**") and "**" not in rows[1][1] + rows[2][1]
    assert rows[0][2] == "75.0 ± 35.4 (50.0-100.0)" and rows[1][2] == "50.0 ± 0.0 (50.0-50.0)"
    # subset A: a and c tie at 100 (both bold), b is not; subset B: a 50, b 100 (bold), c 0
    assert [r[3].split()[0] for r in rows] == ["**100.0**", "0.0", "**100.0**"]
    assert [r[4].split()[0] for r in rows] == ["50.0", "**100.0**", "0.0"]
    for needle in ("- fliprm ", " UTC, total time 12.3 s", "- command: `fliprm eval x`",
                   "CPUs, Python", "- backend: openai"):
        assert needle in report, needle
    block = report.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block) == {"a": {"t": 1}}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dry_run"] is False and "notice" not in results
    assert results["meta"]["run"]["command"] == "fliprm eval x"
    assert results["meta"]["run"]["machine"]["cpu_count"] >= 1


def test_cli_fake_eval_is_labelled_on_the_first_line_of_report_and_results(tmp_path):
    out = tmp_path / "rb2"
    res = CliRunner().invoke(_app(), ["eval", "rewardbench2", "--data", str(FIX / "rb2_tiny.jsonl"),
                                      "--methods", "longest,pointwise", "--runs", "2", "-b", "fake",
                                      "--no-cache", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert report.splitlines()[0] == FIRST and "- backend: fake" in report
    assert "# rb2_tiny: evaluation" in report and "| across runs |" in report
    results_text = (out / "results.json").read_text()
    results = json.loads(results_text)
    assert list(results)[:2] == ["dry_run", "notice"] and results["notice"] == DRY_RUN
    assert results["meta"]["run"]["backend"] == "fake"
    assert results["meta"]["run"]["total_seconds"] >= 0
    assert set(results["meta"]["settings"]) == {"longest", "pointwise"}
    accs = [m["accuracy"] for m in results["methods"].values()]
    assert accs == sorted(accs, reverse=True)
    assert DRY_RUN in res.output


def test_cli_fake_rerank_report_is_labelled_sorted_and_has_settings_json(tmp_path):
    out = tmp_path / "bon"
    res = CliRunner().invoke(_app(), ["rerank", str(FIX / "bon8_tiny.jsonl"), "--methods",
                                      "pointwise,longest", "--label-field", "preference", "-b",
                                      "fake", "--no-cache", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "bon_report.md").read_text()
    assert report.splitlines()[0] == FIRST
    assert "# Best-of-N reranking on bon8_tiny" in report and "- backend: fake" in report
    rows = _table_rows(report, "Ties at the top are broken by a seeded uniform choice.")
    # longest picks the best-labelled answer in both rows (1.95), the oracle's value, bold alone
    assert rows[0][0] == "longest" and rows[0][1].startswith("**1.950**")
    assert "**" not in "".join(r[1] for r in rows[1:])
    block = report.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert set(json.loads(block)) == {"pointwise", "longest"}
    results = json.loads((out / "bon_results.json").read_text())
    assert results["dry_run"] is True and results["meta"]["run"]["backend"] == "fake"


def test_longest_only_run_says_no_model_was_used(tmp_path):
    recs = [_rec("longest", "1", "A", 1.0)]
    write_report(recs, tmp_path, run=run_info(backend=None, seconds=0.0, command=["x"]))
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# RewardBench 2 evaluation") and "- backend: none" in report


def test_real_command_line_is_recorded(tmp_path):
    out = tmp_path / "rb2"
    cmd = [sys.executable, "-m", "fliprm.cli.main", "eval", "rewardbench2", "--data",
           str(FIX / "rb2_tiny.jsonl"), "--methods", "longest", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "results.json").read_text())["meta"]["run"]
    assert run["command"] == ("fliprm eval rewardbench2 --data " + str(FIX / "rb2_tiny.jsonl")
                              + " --methods longest --out " + str(out))


# ---- plots --------------------------------------------------------------------------------------


@pytest.fixture
def figures(monkeypatch):
    """Every figure a report saves, kept open for inspection."""
    if not HAS_PLOTS:
        pytest.skip("matplotlib not installed")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved: dict[str, object] = {}
    real = matplotlib.figure.Figure.savefig

    def keep(self, path, *a, **k):
        saved[Path(path).name] = self
        return real(self, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    return saved


def test_rb2_plots_show_n_intervals_zero_bars_and_the_data_name(tmp_path, figures):
    recs = [_rec("flip", "1", "Focus", 0.0), _rec("flip", "2", "Focus", 0.0),
            _rec("longest", "1", "Focus", 1.0), _rec("longest", "2", "Focus", 0.0)]
    write_report(recs, tmp_path, run=run_info(backend="fake", seconds=1, command=["x"]),
                 dataset="alpaca_tiny")
    for name in ("accuracy_by_subset.png", "accuracy_by_length.png"):
        ax = figures[name].axes[0]
        title = ax.get_title()
        assert title.startswith("alpaca_tiny: accuracy") and "RewardBench" not in title
        assert DRY_RUN in title
        texts = [t.get_text() for t in ax.texts]
        # flip's bar is 0: its label and a stub at 0 make it visible; every bar names its n
        assert "0\nn=2" in texts and "50\nn=2" in texts
        assert any(list(line.get_ydata()) == [0, 0] and line.get_linewidth() >= 3
                   for line in ax.lines)
        # error bars (95% CI) on both plots, the length plot included: longest's items are
        # 1 and 0, so its interval spans 0..1
        from matplotlib.container import ErrorbarContainer

        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        spans = [abs(seg[1][1] - seg[0][1]) for c in bars for coll in c.lines[2]
                 for seg in coll.get_segments()]
        assert len(bars) == 2 and max(spans) == pytest.approx(1.0)


def test_bon_curve_oracle_drawn_above_an_equal_method_with_n_and_name(tmp_path, figures):
    recs = [{"id": str(i), "method": "longest", "pick": 0, "scores": [2.0, 1.0], "top": [0],
             "tie": False, "parse_failures": 0, "calls": 0, "tokens": 0, "seconds": 0.0,
             "errors": [], "labels": [2.0, 1.0], "picked_label": 2.0} for i in range(3)]
    write_bon_report(recs, tmp_path, dataset="alpacaeval_bon8")
    ax = figures["bon_curve.png"].axes[0]
    assert ax.get_title() == "Best-of-N on alpacaeval_bon8"
    lines = {line.get_label(): line for line in ax.lines}
    oracle, longest = lines["oracle pick (n=3)"], lines["longest (n=3)"]
    assert list(oracle.get_ydata()) == list(longest.get_ydata())  # the same curve...
    assert oracle.get_zorder() > longest.get_zorder()  # ...and the oracle stays visible
    assert oracle.get_markerfacecolor() == "none"  # hollow: the method shows through


# ---- leaderboard ----------------------------------------------------------------------------------


def test_eval_report_merges_folders_into_one_sorted_leaderboard(tmp_path):
    a, b, bon = tmp_path / "a", tmp_path / "b", tmp_path / "bon"
    write_report([_rec("pointwise", "1", "A", 0.0), _rec("pointwise", "2", "A", 1.0)], a,
                 run=run_info(backend="openai", seconds=1, command=["x"]), dataset="set1")
    write_report([_rec("flip", "1", "A", 1.0, 0), _rec("flip", "1", "A", 1.0, 1),
                  _rec("longest", "1", "A", 0.0)], b,
                 run=run_info(backend="fake", seconds=1, command=["x"]), dataset="set2")
    write_bon_report([{"id": "1", "method": "longest", "pick": 0, "scores": [2.0, 1.0],
                       "top": [0], "tie": False, "parse_failures": 0, "calls": 0, "tokens": 0,
                       "seconds": 0.0, "errors": [], "labels": [2.0, 1.0], "picked_label": 2.0}],
                     bon)
    md = tmp_path / "lb.md"
    res = CliRunner().invoke(_app(), ["eval", "report", str(a), str(b), str(bon), "-o", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert text.startswith("Rows marked DRY RUN come from the fake backend")
    acc = _table_rows(text, "## Accuracy (%, RewardBench 2 scoring)")
    assert [(r[0], r[1], r[2]) for r in acc] == [
        ("1", "flip (DRY RUN)", "set2"), ("2", "pointwise", "set1"),
        ("3", "longest (DRY RUN)", "set2")]
    assert acc[0][3].startswith("**100.0**") and acc[1][3].startswith("50.0 [")
    assert acc[0][4] == "100.0 ± 0.0 (100.0-100.0)" and acc[1][4] == "-"
    assert (acc[1][6], acc[1][7]) == ("openai", str(a))
    (bon_row,) = _table_rows(text, "## Best-of-N (mean label of the pick)")
    assert bon_row[1] == "longest" and bon_row[4] == "1.500 / 2.000"
    res = CliRunner().invoke(_app(), ["eval", "report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no results.json" in " ".join(res.output.split())


def test_chance_line_follows_the_number_of_candidates(tmp_path):
    recs = [_rec("longest", "1", "A", 1.0) | {"n_candidates": 2},
            _rec("longest", "2", "A", 0.0) | {"n_candidates": 2}]
    assert write_report(recs, tmp_path / "pairs")["chance"] == 0.5
    recs = [r | {"n_candidates": 4} for r in recs]
    assert write_report(recs, tmp_path / "rb2")["chance"] == 0.25


def test_verify_report_has_the_provenance_header(tmp_path):
    pytest.importorskip("if_verifiable", reason="the verify extra: pip install 'fliprm[verify]'")
    out = tmp_path / "v"
    res = CliRunner().invoke(_app(), ["rerank", str(FIX / "verify_ifeval.jsonl"), "--verifier",
                                      "ifeval", "--methods", "longest", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "verify_report.md").read_text()
    assert report.startswith("# Best-of-N against the ifeval checkers on verify_ifeval\n")
    for needle in ("- fliprm ", "- command: `fliprm", "- backend: none", "- verifier: `ifeval`"):
        assert needle in report, needle
    results = json.loads((out / "verify_results.json").read_text())
    assert results["dry_run"] is False and results["meta"]["run"]["backend"].startswith("none")
