"""Best-of-N reranking: input handling, picks and tie-breaks, the label summary and the CLI."""

from __future__ import annotations

import importlib.util
import json

import pytest
import typer
from typer.testing import CliRunner

from fliprm.backends.fake import FakeBackend
from fliprm.cli import rerank as rerank_cli
from fliprm.config import RewardConfig
from fliprm.errors import ConfigError, InputError
from fliprm.eval._common import judge_factory
from fliprm.eval.best_of_n import arerank, load_rows, pool_sizes, summarize_bon
from fliprm.judges import FlipJudge, LongestJudge, PointwiseJudge
from helpers_fliprm import FIXTURES

#: the plots come with the eval extra (matplotlib); without it the reports are text only
HAS_PLOTS = importlib.util.find_spec("matplotlib") is not None
HAS_PARQUET = importlib.util.find_spec("pyarrow") is not None

BON = FIXTURES / "bon_tiny.jsonl"


def test_load_rows_fields_and_errors(tmp_path):
    rows = load_rows(BON, label_field="preference", limit=2)
    assert [r["id"] for r in rows] == ["1", "2"]  # no id column: row numbers
    assert rows[0]["labels"] == [1.5, 1.9, 1.0, 1.1] and len(rows[0]["candidates"]) == 4
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"q": "Q?", "outs": ["a", "b"], "lab": [1]}) + "\n")
    assert load_rows(p, prompt_field="q", candidates_field="outs")[0]["candidates"] == ["a", "b"]
    with pytest.raises(InputError, match="as long as"):
        load_rows(p, prompt_field="q", candidates_field="outs", label_field="lab")
    with pytest.raises(InputError, match="'prompt'"):
        load_rows(p)


async def test_rerank_records_every_score_and_resumes(tmp_path):
    rows = load_rows(BON, label_field="preference")
    fb = FakeBackend(lambda r: '{"SCORE": 9}' if "Paris." in r.messages[-1]["content"]
                     or "hola" in r.messages[-1]["content"] else '{"SCORE": 3}')
    out = tmp_path / "pointwise.jsonl"
    recs = await arerank(rows, PointwiseJudge(fb, config=RewardConfig(max_tokens=16)), out=out)
    by = {r["id"]: r for r in recs}
    assert len(fb.calls) == 12 and len(by) == 3
    assert by["1"]["scores"] == [9.0, 9.0, 3.0, 3.0] and by["1"]["tie"]
    assert by["1"]["pick"] in (0, 1) and by["1"]["picked_label"] == by["1"]["labels"][by["1"]["pick"]]
    assert by["2"]["pick"] == 3 and by["2"]["picked_label"] == 1.8
    same = PointwiseJudge(fb, config=RewardConfig(max_tokens=16))
    assert await arerank(rows, same, out=out) == [] and len(fb.calls) == 12
    # a rerun with other settings is refused, not mixed in (regression: it skipped silently)
    with pytest.raises(ConfigError, match=r"other settings.*max_tokens: 16 -> 512.*--force"):
        await arerank(rows, PointwiseJudge(fb), out=out)


async def test_tie_break_is_seeded_and_repeatable():
    row = [{"id": "t", "prompt": "P", "candidates": ["aa", "bb", "cc", "dd"]}]
    picks = {(await arerank(row, LongestJudge(seed=s)))[0]["pick"] for s in range(12)}
    assert len(picks) > 1  # seeds spread the picks over the tied candidates
    a = (await arerank(row, LongestJudge(seed=5)))[0]["pick"]
    assert a == (await arerank(row, LongestJudge(seed=5)))[0]["pick"]


def test_pool_sizes():
    assert pool_sizes(8) == [1, 2, 4, 8] and pool_sizes(1) == [1] and pool_sizes(3) == [1, 2, 3]


def _rec(rid, scores, labels, pick, method="m"):
    return {"id": rid, "method": method, "scores": scores, "labels": labels, "pick": pick,
            "tie": False, "parse_failures": 0, "calls": len(scores), "tokens": 10, "seconds": 1.0}


def test_summary_curve_random_and_oracle():
    recs = [_rec("a", [4, 3, 2, 1], [1.0, 2.0, 1.0, 1.0], 0),
            _rec("b", [1, 2, 3, 4], [1.0, 1.0, 1.0, 2.0], 3)]
    s = summarize_bon(recs)
    assert s["sizes"] == [1, 2, 4]
    assert s["curve"]["random"][-1] == pytest.approx(1.25)  # mean of every label
    assert s["curve"]["oracle"][-1] == 2.0
    assert s["methods"]["m"]["mean_label"] == pytest.approx(1.5)  # picks: 1.0 and 2.0
    assert s["curve"]["m"][-1] == s["methods"]["m"]["mean_label"]
    # with a pool of one there is nothing to choose: every picker equals random and oracle
    assert s["curve"]["m"][0] == s["curve"]["random"][0] == s["curve"]["oracle"][0]


def _app() -> typer.Typer:
    app = typer.Typer()
    rerank_cli.register(app)

    @app.command()
    def _noop() -> None:  # keeps typer from collapsing to a single command
        pass

    return app


def test_cli_with_labels_writes_report_and_curve(tmp_path):
    out = tmp_path / "bon"
    res = CliRunner().invoke(_app(), ["rerank", str(BON), "--label-field", "preference",
                                      "--methods", "flip,longest", "--backend", "fake",
                                      "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("flip.jsonl", "longest.jsonl", "bon_report.md", "bon_results.json",
                 *(["bon_curve.png"] if HAS_PLOTS else [])):
        assert (out / name).is_file(), name
    s = json.loads((out / "bon_results.json").read_text())
    assert s["methods"]["longest"]["n"] == 3 and "oracle" in s["curve"]
    assert "| oracle |" in (out / "bon_report.md").read_text()


def test_cli_without_labels_only_writes_picks(tmp_path):
    res = CliRunner().invoke(_app(), ["rerank", str(BON), "--methods", "longest",
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "longest.jsonl").is_file() and not (tmp_path / "bon_report.md").exists()


@pytest.mark.model
async def test_real_model_flip_rerank(embedded_backend):
    row = [{"id": "r", "prompt": "Name the capital of France.",
            "candidates": ["Bananas are yellow.",
                           "The capital of France is Paris, which is also its largest city."],
            "labels": [1.0, 2.0]}]
    (rec,) = await arerank(row, FlipJudge(embedded_backend, config=RewardConfig(max_tokens=128)))
    assert rec["calls"] == 2 and not rec["errors"] and rec["tokens"] > 0
    assert rec["pick"] == 1 and rec["picked_label"] == 2.0


def test_judge_factory_for_rerank_shares_engine():
    make = judge_factory(FakeBackend([]))
    assert make("flip", 0).reward.engine is make("pairwise", 0).engine


def test_flip_template_option_reaches_the_judge():
    make = judge_factory(FakeBackend([]), RewardConfig(template="flip"))
    assert make("flip", 0).reward.template.name == "flip"
    assert make("flip", 0).reward.family.contextual.name == "flip-contextual"
    assert make("pointwise", 0).template.name == "pointwise"


def test_cli_eight_candidates_curve_over_1_2_4_8_against_random_and_oracle(tmp_path):
    bon8 = FIXTURES / "bon8_tiny.jsonl"
    out = tmp_path / "bon8"
    res = CliRunner().invoke(_app(), ["rerank", str(bon8), "--label-field", "preference",
                                      "--methods", "flip,longest", "--backend", "fake",
                                      "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "bon_results.json").read_text())
    assert s["sizes"] == [1, 2, 4, 8]
    assert set(s["curve"]) == {"flip", "longest", "random", "oracle"}
    # N=8, by hand from the fixture: oracle = mean of the row maxima, random = mean of all labels
    assert s["curve"]["oracle"][-1] == pytest.approx((2.0 + 1.9) / 2)
    assert s["curve"]["random"][-1] == pytest.approx((10.7 / 8 + 10.0 / 8) / 2)
    # the longest answer is the best-labelled one in both rows
    assert s["methods"]["longest"]["mean_label"] == pytest.approx((2.0 + 1.9) / 2)
    report = (out / "bon_report.md").read_text()
    assert "| pick | N=1 | N=2 | N=4 | N=8 |" in report
    assert "| random pick |" in report and "| oracle |" in report
    if HAS_PLOTS:
        assert (out / "bon_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
