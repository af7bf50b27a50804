"""fliprm.verifiers: exact IFEval / IFBench verdicts on the shipped fixtures, bad rows, the
missing extra, NLTK data that is never downloaded, and the TRL-style reward function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("if_verifiable", reason="the verify extra: pip install 'fliprm[verify]'")

from fliprm import verifiers
from fliprm.errors import InputError, MissingDependency
from fliprm.verifiers import Verdict, VerifierUnavailable, verifier_reward, verify

FIX = Path(__file__).parent / "fixtures"


def _rows(suite: str) -> dict[str, dict]:
    lines = (FIX / f"verify_{suite}.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def _nltk_has(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


# (prompt_strict, prompt_loose, inst_strict, inst_loose) per candidate, worked out by hand
IFEVAL = {
    "lower-nocomma": [(1, 1, [1, 1], [1, 1]), (0, 0, [0, 1], [0, 1]), (0, 0, [1, 0], [1, 0]),
                      # "**Morning**" on line 1: strict fails lowercase, loose drops that line
                      (0, 1, [0, 1], [1, 1])],
    "keywords-words": [(1, 1, [1, 1], [1, 1]), (0, 0, [0, 1], [0, 1]), (0, 0, [1, 0], [1, 0]),
                       (1, 1, [1, 1], [1, 1])],
    "bullets-ps": [(1, 1, [1, 1], [1, 1]), (0, 0, [0, 1], [0, 1]), (0, 0, [1, 0], [1, 0]),
                   (0, 0, [0, 0], [0, 0])],
}
IFBENCH = {
    "cat-words": [(1, 1, [1], [1]), (0, 0, [0], [0]), (0, 0, [0], [0]), (1, 1, [1], [1])],
    "numbers-noconsec": [(1, 1, [1, 1], [1, 1]), (0, 0, [1, 0], [1, 0]), (0, 0, [0, 1], [0, 1]),
                         (0, 0, [0, 1], [0, 1])],
    "keyword-sentence": [(1, 1, [1], [1]), (0, 0, [0], [0]), (0, 0, [0], [0]), (0, 0, [0], [0])],
}


@pytest.mark.parametrize("suite,expected", [("ifeval", IFEVAL), ("ifbench", IFBENCH)])
def test_exact_verdicts_on_the_fixtures(suite, expected):
    rows = _rows(suite)
    assert set(rows) == set(expected)
    for rid, want in expected.items():
        for j, (ps, pl, ist, il) in enumerate(want):
            v = verify(rows[rid], rows[rid]["candidates"][j], suite)
            got = (v.prompt_strict, v.prompt_loose, v.inst_strict, v.inst_loose)
            assert got == (bool(ps), bool(pl), [bool(x) for x in ist], [bool(x) for x in il]), \
                (rid, j)


def test_verdict_is_frozen_and_empty_or_thinking_only_fails_everything():
    row = _rows("ifeval")["lower-nocomma"]
    v = verify(row, "   ", "ifeval")
    assert v == Verdict(False, False, [False, False], [False, False])
    assert verify(row, "<think>hmm</think>", "ifeval") == v
    # the reasoning block is dropped before checking (a capital inside it does not count)
    assert verify(row, "<think>Plan It</think>all lower here.", "ifeval").prompt_strict
    with pytest.raises(AttributeError):
        v.prompt_strict = True  # type: ignore[misc]


def test_bad_rows_are_one_line_input_errors():
    base = {"prompt": "P", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    with pytest.raises(InputError, match="unknown ifeval instruction 'nope:x'"):
        verify({**base, "instruction_id_list": ["nope:x"]}, "a", "ifeval")
    with pytest.raises(InputError, match="'kwargs' must be a list of 1 objects"):
        verify({**base, "kwargs": []}, "a", "ifeval")
    with pytest.raises(InputError, match="'instruction_id_list' must be a non-empty list"):
        verify({**base, "instruction_id_list": []}, "a", "ifeval")
    with pytest.raises(InputError, match="unknown verifier suite"):
        verify(base, "a", "mmlu")  # type: ignore[arg-type]
    # the upstream checker would draw a random word limit: refused, not a coin flip
    with pytest.raises(VerifierUnavailable, match="leave num_words unset or invalid") as e:
        verify({**base, "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"relation": "less than"}]}, "a b", "ifeval")
    assert e.value.instruction == "ifeval:length_constraints:number_words"
    # an official IFEval row (key 1128-style): letter '#' is not a letter, the checker draws one
    with pytest.raises(VerifierUnavailable, match="leave letter unset or invalid"):
        verify({**base, "instruction_id_list": ["keywords:letter_frequency"], "kwargs": [
            {"let_relation": "at least", "letter": "#", "let_frequency": 4}]}, "a", "ifeval")
    # a kwargs column stored as JSON text and null kwargs (HF struct columns) are read
    row = {**base, "instruction_id_list": ["keywords:existence"],
           "kwargs": json.dumps([{"keywords": ["tea"], "num_words": None}])}
    assert verify(row, "I like tea", "ifeval").prompt_strict


@pytest.mark.skipif(_nltk_has("tokenizers/punkt_tab"), reason="punkt_tab is installed here")
def test_checker_needing_missing_nltk_data_is_unavailable_not_downloaded(monkeypatch):
    import nltk

    def boom(*a, **k):
        raise AssertionError("nltk.download must never be called")

    monkeypatch.setattr(nltk, "download", boom)
    row = {"prompt": "Two sentences.", "instruction_id_list": ["length_constraints:number_sentences"],
           "kwargs": [{"num_sentences": 2, "relation": "less than"}]}
    with pytest.raises(VerifierUnavailable,
                       match="'length_constraints:number_sentences' needs NLTK data 'punkt_tab'"):
        verify(row, "One. Two. Three.", "ifeval")


def test_ifbench_import_does_not_download(monkeypatch):
    import nltk

    calls = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: calls.append(a))
    for mod in [m for m in sys.modules if m.startswith("if_verifiable.ifbench")]:
        monkeypatch.delitem(sys.modules, mod)
    verifiers._registry.cache_clear()
    try:
        assert "count:word_count_range" in verifiers._registry("ifbench")
    finally:
        verifiers._registry.cache_clear()
    assert calls == []
    assert nltk.download is not verifiers._refuse_download  # restored after the import


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "if_verifiable.ifeval.instructions_registry", None)
    verifiers._registry.cache_clear()
    verifiers._build.cache_clear()
    try:
        with pytest.raises(MissingDependency, match=r"pip install 'fliprm\[verify\]'"):
            verify({"prompt": "P", "instruction_id_list": ["punctuation:no_comma"],
                    "kwargs": [{}]}, "a", "ifeval")
    finally:
        verifiers._registry.cache_clear()
        verifiers._build.cache_clear()


def test_core_import_stays_light():
    import subprocess

    code = ("import sys, fliprm, fliprm.verifiers; "
            "print(any(m.startswith(('if_verifiable', 'nltk')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_verifier_reward_trl_style():
    rows = _rows("ifbench")
    r = rows["cat-words"]
    fn = verifier_reward("ifbench")
    assert fn.__name__ == "ifbench_verifier"
    # strings, and TRL's conversational form (lists of messages)
    prompts = [r["prompt"], [{"role": "user", "content": r["prompt"]}]]
    completions = [r["candidates"][0], [{"role": "assistant", "content": r["candidates"][1]}]]
    extra = {"instruction_id_list": [r["instruction_id_list"]] * 2, "kwargs": [r["kwargs"]] * 2,
             "completion_ids": [[1], [2]]}
    assert fn(prompts, completions, **extra) == [1.0, 0.0]
    # prompt-level loose: the bold title line is forgiven
    e = _rows("ifeval")["lower-nocomma"]
    assert verifier_reward("ifeval")([e["prompt"]], [e["candidates"][3]],
                                     instruction_id_list=[e["instruction_id_list"]],
                                     kwargs=[e["kwargs"]]) == [1.0]
    with pytest.raises(InputError, match="needs the dataset columns 'instruction_id_list'"):
        fn(prompts, completions)
    with pytest.raises(InputError, match="sample 1: unknown ifbench instruction"):
        fn(prompts, completions, instruction_id_list=[r["instruction_id_list"], ["x:y"]],
           kwargs=[r["kwargs"], [{}]])
