"""``fliprm rerank --verifier ifeval|ifbench``: candidates labelled by the instruction checkers,
pass rates of each method's pick beside longest / random / oracle, end to end with -b fake."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("if_verifiable", reason="the verify extra: pip install 'fliprm[verify]'")

from fliprm.backends import fake
from fliprm.cli import rerank as rerank_cli
from fliprm.eval.bon_verdicts import summarize_verified
from helpers_fliprm import FIXTURES as FIX

#: the candidate each scripted judge prefers, per row (by a phrase only that candidate has)
GOOD = {
    "ifeval": ["**Morning**", "fresh leaf", "only two came to mind"],  # candidates 3, 0, 1
    "ifbench": ["small grey cat", "384400 km away", "followed the river"],  # candidates 3, 1, 0
}


def _app() -> typer.Typer:
    app = typer.Typer()
    rerank_cli.register(app)

    @app.command()
    def _noop() -> None:  # keeps typer from collapsing to a single command
        pass

    return app


@pytest.fixture
def scripted(monkeypatch):
    """``-b fake`` replies: the FLIP judge (F1, explicit) infers the prompt itself for the good
    candidate and an unrelated line otherwise; the pointwise judge scores 9 vs 2."""

    def install(suite: str) -> None:
        prompts = [json.loads(x)["prompt"]
                   for x in (FIX / f"verify_{suite}.jsonl").read_text().splitlines()]

        def reply(req):
            text = req.messages[-1]["content"]
            good = [i for i, g in enumerate(GOOD[suite]) if g in text]
            props = (req.json_schema or {}).get("properties", {})
            if "SCORE" in props:
                out = {"REASONING": "x", "SCORE": 9 if good else 2}
            else:  # word F1 1.0 for the good candidate, 0.0 for the others
                out = {"INFERRED INSTRUCTION": prompts[good[0]] if good else "zzz qqq"}
            return fake.Completion(text=json.dumps(out), prompt_tokens=5, completion_tokens=5)

        monkeypatch.setattr(fake, "scripted_reply", reply)

    return install


def _run(tmp_path, suite, *extra):
    out = tmp_path / suite
    res = CliRunner().invoke(_app(), ["rerank", str(FIX / f"verify_{suite}.jsonl"),
                                      "--verifier", suite, "--methods", "flip,pointwise",
                                      "--backend", "fake", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "verify_results.json").read_text()), res.output


def _rates(s, method):
    return [s["methods"][method][k]["rate"] for k in
            ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")]


def test_rerank_verifier_ifeval_end_to_end(tmp_path, scripted):
    scripted("ifeval")
    out, s, output = _run(tmp_path, "ifeval")
    assert s["n_prompts"] == 3 and s["suite"] == "ifeval" and s["excluded"] == {}
    # picks 3, 0, 1: prompt strict 0+1+0, loose 1+1+0; instructions strict 1+2+1, loose 2+2+1 of 6
    want = [1 / 3, 2 / 3, 4 / 6, 5 / 6]
    assert _rates(s, "flip") == pytest.approx(want)
    assert _rates(s, "pointwise") == pytest.approx(want)
    # longest picks 3, 2, 1 (by characters)
    assert _rates(s, "longest") == pytest.approx([0, 1 / 3, 3 / 6, 4 / 6])
    # random: the mean of each row's candidates, by hand from the fixture verdicts
    assert _rates(s, "random") == pytest.approx([1 / 3, 1.25 / 3, 3.75 / 6, 4 / 6])
    assert _rates(s, "oracle") == [1.0, 1.0, 1.0, 1.0]
    lo, hi = s["methods"]["flip"]["prompt_loose"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1
    assert s["methods"]["flip"]["diff"]["random"]["prompt_loose"]["diff"] == \
        pytest.approx(2 / 3 - 1.25 / 3)
    report = (out / "verify_report.md").read_text()
    assert "| pick | prompt strict | prompt loose | inst strict | inst loose |" in report
    assert "| flip | 33.3 [" in report and "| oracle | 100.0 [100.0, 100.0]" in report
    assert "prompt strict  33.3%  loose  66.7%" in output
    assert (out / "flip.jsonl").is_file() and (out / "pointwise.jsonl").is_file()


def test_rerank_verifier_ifbench_end_to_end(tmp_path, scripted):
    scripted("ifbench")
    _, s, _ = _run(tmp_path, "ifbench")
    # picks 3, 1, 0: prompt 1+0+1 of 3; instructions strict = loose = 1+1+1 of 4
    assert _rates(s, "flip") == pytest.approx([2 / 3, 2 / 3, 3 / 4, 3 / 4])
    # longest picks 2, 3, 0 (by characters)
    assert _rates(s, "longest") == pytest.approx([1 / 3, 1 / 3, 2 / 4, 2 / 4])
    assert _rates(s, "random") == pytest.approx([(0.5 + 0.25 + 0.25) / 3] * 2
                                                + [(0.5 + 1.25 + 0.25) / 4] * 2)
    assert s["curve"]["oracle"]["prompt_loose"][0] == s["curve"]["random"]["prompt_loose"][0]


def test_rerank_verifier_missing_fields_names_the_line(tmp_path):
    p = tmp_path / "c.jsonl"
    row = json.loads((FIX / "verify_ifeval.jsonl").read_text().splitlines()[0])
    p.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "b", "kwargs": None}) + "\n")
    res = CliRunner().invoke(_app(), ["rerank", str(p), "--verifier", "ifeval", "--methods",
                                      "longest", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "line 2: --verifier needs 'instruction_id_list' and 'kwargs'" in res.output
    bad = {**row, "instruction_id_list": ["nope:x"], "kwargs": [{}]}
    p.write_text(json.dumps(bad) + "\n")
    res = CliRunner().invoke(_app(), ["rerank", str(p), "--verifier", "ifeval", "--methods",
                                      "longest", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "line 1: unknown ifeval instruction 'nope:x'" in res.output
    assert not (tmp_path / "o2" / "longest.jsonl").exists()  # refused before any work
    res = CliRunner().invoke(_app(), ["rerank", str(p), "--verifier", "mmlu", "--methods",
                                      "longest", "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "use ifeval or ifbench" in res.output


def test_rerank_verifier_reports_rows_it_cannot_check(tmp_path, monkeypatch):
    from fliprm import verifiers

    real = verifiers.verify

    def verify(row, response, suite):
        if row["id"] == "bullets-ps":
            raise verifiers.VerifierUnavailable("ifeval instruction 'x' needs NLTK data 'punkt_tab'")
        return real(row, response, suite)

    monkeypatch.setattr(verifiers, "verify", verify)
    res = CliRunner().invoke(_app(), ["rerank", str(FIX / "verify_ifeval.jsonl"), "--verifier",
                                      "ifeval", "--methods", "longest",
                                      "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "verify_results.json").read_text())
    assert s["n_prompts"] == 2 and list(s["excluded"]) == ["bullets-ps"]
    assert "not checked: row bullets-ps" in res.output
    assert "needs NLTK data 'punkt_tab'" in (tmp_path / "o" / "verify_report.md").read_text()


def test_summary_first_n_curve_and_paired_diff():
    def v(ps, pl, ist, il):
        return {"prompt_strict": ps, "prompt_loose": pl, "inst_strict": ist, "inst_loose": il}

    ok, half, bad = v(1, 1, [1, 1], [1, 1]), v(0, 1, [0, 1], [1, 1]), v(0, 0, [0, 0], [0, 0])
    pools = [{"id": "a", "verdicts": [bad, ok, half, bad], "lengths": [1, 2, 3, 4],
              "scores": {"m": [0.0, 0.9, 0.5, 0.1], "ref": [0.9, 0.0, 0.1, 0.2]}},
             {"id": "b", "verdicts": [half, bad, bad, ok], "lengths": [4, 3, 2, 1],
              "scores": {"m": [0.9, 0.0, 0.1, 0.2], "ref": [0.0, 0.9, 0.1, 0.2]}}]
    s = summarize_verified(pools, first_n=True, refs=("random", "ref"), n_boot=200)
    assert s["sizes"] == [1, 2, 4]
    # N=1 is candidate 0 for every pick; N=2: m picks ok (a) and half (b)
    assert s["curve"]["m"]["prompt_loose"] == [0.5, 1.0, 1.0]
    assert s["curve"]["ref"]["prompt_strict"] == [0.0, 0.0, 0.0]
    assert s["curve"]["oracle"]["prompt_strict"] == [0.0, 0.5, 1.0]
    assert s["methods"]["m"]["diff"]["ref"]["inst_strict"]["diff"] == pytest.approx(3 / 4)
    assert s["methods"]["m"]["diff"]["ref"]["prompt_loose"] == {"diff": 1.0, "ci": [1.0, 1.0]}
    d = s["methods"]["m"]["diff"]["ref"]["prompt_strict"]  # +1 on a, 0 on b
    assert d["diff"] == 0.5 and d["ci"][0] <= 0.5 <= d["ci"][1]


def test_rows_whose_judge_calls_failed_are_left_out_of_the_verified_numbers(
    tmp_path, scripted, monkeypatch
):
    from fliprm.errors import BackendUnavailable

    scripted("ifeval")
    answer = fake.scripted_reply

    def reply(req):  # every candidate of row bullets-ps names a pear; no other row's does
        if "pear" in req.messages[-1]["content"]:
            return BackendUnavailable("connection refused")
        return answer(req)

    monkeypatch.setattr(fake, "scripted_reply", reply)
    out = tmp_path / "o"
    res = CliRunner().invoke(_app(), ["rerank", str(FIX / "verify_ifeval.jsonl"), "--verifier",
                                      "ifeval", "--methods", "flip,pointwise", "--backend", "fake",
                                      "--max-retries", "0", "--out", str(out)])
    assert res.exit_code == 1, res.output  # the failed records are counted, as without --verifier
    s = json.loads((out / "verify_results.json").read_text())
    assert s["n_prompts"] == 2 and list(s["excluded"]) == ["bullets-ps"]
    assert "judge calls failed (flip, pointwise)" in s["excluded"]["bullets-ps"]
    # picks 3 and 0 on the rows left (was: the failed row's pick guessed from no scores)
    assert _rates(s, "flip") == pytest.approx([1 / 2, 1, 3 / 4, 1])
    assert _rates(s, "longest") == pytest.approx([0, 1 / 2, 2 / 4, 3 / 4])
