"""bench/bon_verified.py on a tiny synthetic candidates file with the fake backend: scores every
(row, key, k) once, resumes after an interruption, refuses other settings, reports exact rates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("if_verifiable", reason="the verify extra: pip install 'fliprm[verify]'")

from fliprm.backends import fake
from fliprm.config import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"
#: the one candidate per fixture row that the scripted judges prefer (candidates 3, 0, 1)
GOOD = ["**Morning**", "fresh leaf", "only two came to mind"]


@pytest.fixture
def bench(monkeypatch):
    # as ``python bench/bon_verified.py`` has it: bench/ on the path for its sibling modules
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bon_verified", ROOT / "bench" / "bon_verified.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def results(tmp_path):
    """candidates-ifeval.jsonl as bench/bon_generate.py writes it: 8 samples per prompt
    (k = 0..7: the fixture's 4 candidates twice)."""
    lines = []
    for r in map(json.loads, (FIX / "verify_ifeval.jsonl").read_text().splitlines()):
        for k in range(8):
            resp = r["candidates"][k % 4]
            lines.append(json.dumps({
                "set": "ifeval", "key": r["id"], "prompt": r["prompt"],
                "instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"], "k": k,
                "seed": k, "temperature": 0.7, "max_tokens": 64, "response": resp,
                "completion_tokens": len(resp.split()), "finish_reason": "stop"}))
    (tmp_path / "candidates-ifeval.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture
def calls(monkeypatch):
    """``--backend fake`` replies: F1 1.0 / pointwise 9 for the good candidate, else 0.0 / 2."""
    prompts = [json.loads(x)["prompt"] for x in (FIX / "verify_ifeval.jsonl").read_text().splitlines()]
    seen: list[str] = []

    def reply(req):
        text = req.messages[-1]["content"]
        seen.append(text)
        if req.forced_text is not None:  # likelihood / pmi rows: the dry-run numbers
            return fake._scripted_forcing(req, text)
        good = [i for i, g in enumerate(GOOD) if g in text]
        if "SCORE" in (req.json_schema or {}).get("properties", {}):
            out = {"REASONING": "x", "SCORE": 9 if good else 2}
        else:
            out = {"INFERRED INSTRUCTION": prompts[good[0]] if good else "zzz qqq"}
        return fake.Completion(text=json.dumps(out), prompt_tokens=5, completion_tokens=5)

    monkeypatch.setattr(fake, "scripted_reply", reply)
    return seen


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


def test_scores_resumes_refuses_and_reports(bench, results, calls, capsys):
    args = ["--sets", "ifeval", "--backend", "fake", "--results", str(results)]
    bench.main([*args, "--rows", "flip-short,pointwise,default,paper"])
    for row in ("flip-short", "pointwise", "default", "paper"):
        recs = [json.loads(x) for x in _lines(results / f"scores-{row}-ifeval.jsonl")]
        assert sorted(r["id"] for r in recs) == sorted(f"{k}|{i}" for k in
                                                       ("lower-nocomma", "keywords-words",
                                                        "bullets-ps") for i in range(8))
        assert all(r["score"] is not None and "error" not in r for r in recs), row
    fs = {json.loads(x)["id"]: json.loads(x)["score"]
          for x in _lines(results / "scores-flip-short-ifeval.jsonl")}
    assert fs["lower-nocomma|3"] == fs["lower-nocomma|7"] == 1.0 and fs["lower-nocomma|0"] == 0.0

    # a rerun redoes nothing; an interrupted one (a half-written last line) redoes what is missing
    n = len(calls)
    bench.main([*args, "--rows", "flip-short,pointwise"])
    assert len(calls) == n
    path = results / "scores-flip-short-ifeval.jsonl"
    kept = _lines(path)[:-3]
    path.write_text("\n".join(kept) + "\n" + _lines(path)[-3][:20])
    bench.main([*args, "--rows", "flip-short"])
    assert len(calls) == n + 3 and len(_lines(path)) == 24

    # other settings under the same row name: refused, nothing mixed in
    real = bench.ROWS["flip-short"]
    bench.ROWS["flip-short"] = (lambda be, rt: bench.FlipJudge(reward=bench.FlipReward(
        be, config=RewardConfig(method="f1", max_tokens=16), runtime=rt)), real[1])
    with pytest.raises(SystemExit, match=r"\[flip-short\].*other settings.*max_tokens"):
        bench.main([*args, "--rows", "flip-short"])
    bench.ROWS["flip-short"] = real

    capsys.readouterr()
    bench.main([*args, "--rows", "flip-short,pointwise", "--report"])
    out = capsys.readouterr().out
    s = json.loads((results / "report-ifeval.json").read_text())
    assert s["n_prompts"] == 3 and s["sizes"] == [1, 2, 4, 8] and s["first_n"]

    def rates(m, i=-1):
        return [s["curve"][m][k][i] for k in
                ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")]

    # picks 3, 0, 1 (by hand from the fixture's verdicts, as in tests/eval/test_bon_verdicts.py)
    assert rates("flip-short") == rates("pointwise") == pytest.approx([1 / 3, 2 / 3, 4 / 6, 5 / 6])
    assert rates("longest") == pytest.approx([0, 1 / 3, 3 / 6, 4 / 6])
    assert rates("random") == pytest.approx([1 / 3, 1.25 / 3, 3.75 / 6, 4 / 6])
    assert rates("oracle") == [1.0] * 4
    # N=1 is candidate 0 for every pick (all three pass), N=2 is candidates 0 and 1
    assert all(rates(m, 0) == [1.0] * 4 for m in ("flip-short", "longest", "random", "oracle"))
    assert rates("random", 1)[0] == pytest.approx(0.5)
    d = s["methods"]["flip-short"]["diff"]
    assert d["pointwise"]["prompt_loose"] == {"diff": 0.0, "ci": [0.0, 0.0]}
    assert d["random"]["prompt_loose"]["diff"] == pytest.approx(2 / 3 - 1.25 / 3)
    assert set(s["items_per_s"]) == {"flip-short", "pointwise"}
    assert "## ifeval" in out and "| pick | prompt strict | prompt loose | inst strict | inst " \
        "loose | items/s |" in out
    assert "Paired difference to pointwise" in out and "| N=1 | N=2 | N=4 | N=8 |" in out


def test_report_waits_for_every_row_and_refuses_changed_candidates(bench, results, calls,
                                                                   capsys):
    args = ["--sets", "ifeval", "--backend", "fake", "--results", str(results)]
    bench.main([*args, "--rows", "flip-short", "--limit", "2"])
    bench.main([*args, "--rows", "flip-short", "--report"])
    assert "1 prompt(s) not yet scored by every row." in capsys.readouterr().out
    s = json.loads((results / "report-ifeval.json").read_text())
    assert s["n_prompts"] == 2
    # prompts whose checkers need NLTK data that is not installed: left out and counted
    from fliprm import verifiers

    def unavailable(row, response, suite):
        raise verifiers.VerifierUnavailable("x", instruction=f"{suite}:x:y",
                                            reason="NLTK data 'punkt_tab' not installed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(verifiers, "verify", unavailable)
        bench.main([*args, "--rows", "flip-short", "--report"])
    assert ("3 prompt(s) left out, a checker cannot give a verdict: ifeval:x:y: NLTK data "
            "'punkt_tab' not installed (3).") in capsys.readouterr().out
    cands = results / "candidates-ifeval.jsonl"
    cands.write_text(cands.read_text().replace("fresh leaf", "fresh green leaf"))
    with pytest.raises(SystemExit, match=r"keywords-words\|0 was scored on another response"):
        bench.main([*args, "--rows", "flip-short", "--report"])


def test_bad_candidates_file(bench, tmp_path, capsys):
    # a key without all its samples (k = 0..n-1) is a prompt bon_generate.py is still writing:
    # left out and named (never a shifted first-N pool), the report waits for it
    (tmp_path / "candidates-ifbench.jsonl").write_text(json.dumps(
        {"key": "a", "prompt": "P", "instruction_id_list": [], "kwargs": [], "k": 1,
         "response": "x"}) + "\n")
    bench.main(["--sets", "ifbench", "--results", str(tmp_path), "--report"])
    out, err = capsys.readouterr()
    assert "candidates-ifbench.jsonl: 1 prompt(s) without all 1 samples yet, left for later: a" in err
    assert "No prompt is ready." in out
    with pytest.raises(SystemExit, match="candidates not found"):
        bench.main(["--sets", "ifeval", "--results", str(tmp_path), "--report"])


def test_pools_without_a_verdict_are_not_scored(bench, results, calls, capsys, monkeypatch):
    # the report leaves such prompts out, so scoring them would be model time for nothing
    from fliprm import verifiers

    real = verifiers.verify

    def verify(row, response, suite):
        if row["key"] == "keywords-words":
            raise verifiers.VerifierUnavailable("x", instruction=f"{suite}:x:y",
                                                reason="NLTK data 'punkt_tab' not installed")
        return real(row, response, suite)

    monkeypatch.setattr(verifiers, "verify", verify)
    bench.main(["--sets", "ifeval", "--backend", "fake", "--results", str(results),
                "--rows", "flip-short"])
    keys = {json.loads(x)["key"] for x in _lines(results / "scores-flip-short-ifeval.jsonl")}
    assert keys == {"lower-nocomma", "bullets-ps"}
    assert "1 prompt(s) not scored, a checker cannot give a verdict" in capsys.readouterr().err


def test_shards_merge_into_one_scores_file(bench, results, calls, capsys, tmp_path):
    other = tmp_path / "shard1"
    other.mkdir()
    (other / "candidates-ifeval.jsonl").symlink_to(results / "candidates-ifeval.jsonl")
    args = ["--sets", "ifeval", "--backend", "fake", "--rows", "flip-short"]
    bench.main([*args, "--results", str(results), "--shard", "0/2"])
    bench.main([*args, "--results", str(other), "--shard", "1/2"])
    main = results / "scores-flip-short-ifeval.jsonl"
    assert len(_lines(main)) == 16
    n = len(calls)
    bench.main([*args, "--results", str(results), "--merge", str(other)])
    assert len(calls) == n  # merging scores nothing
    ids = [json.loads(x)["id"] for x in _lines(main)]
    assert len(ids) == len(set(ids)) == 24
    assert "[flip-short] ifeval: 8 record(s) merged" in capsys.readouterr().err
    # a second merge adds nothing; the merged file is one row's and reports every prompt
    bench.main([*args, "--results", str(results), "--merge", str(other)])
    assert len(_lines(main)) == 24
    bench.main([*args, "--results", str(results), "--report"])
    assert json.loads((results / "report-ifeval.json").read_text())["n_prompts"] == 3

    # a shard scored with other settings is refused, nothing mixed in
    manifest = other / "scores-flip-short-ifeval.jsonl.fliprm.json"
    m = json.loads(manifest.read_text())
    m["settings"]["flip-short"]["max_tokens"] = 16
    manifest.write_text(json.dumps(m))
    with pytest.raises(SystemExit, match=r"\[flip-short\].*other settings.*max_tokens"):
        bench.main([*args, "--results", str(results), "--merge", str(other)])
    assert len(_lines(main)) == 24
    # a shard whose candidates differ (a record's response hash) is refused too
    manifest.write_text(json.dumps({**m, "settings": json.loads(
        (results / "scores-flip-short-ifeval.jsonl.fliprm.json").read_text())["settings"]}))
    recs = [json.loads(x) for x in _lines(other / "scores-flip-short-ifeval.jsonl")]
    recs[0]["sha"] = "0" * 16
    (other / "scores-flip-short-ifeval.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(SystemExit, match="scored on another response"):
        bench.main([*args, "--results", str(results), "--merge", str(other)])
