"""Issue 21: what README.md says about the CLI and the config, checked against the program.

Each test reads the README statement itself, so the text and the program cannot drift apart
again without a failing test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fliprm.cli import eval as eval_cli
from fliprm.cli import rerank as rerank_cli
from fliprm.cli import score as score_cli
from fliprm.config import RewardConfig, RuntimeOptions
from fliprm.eval.rewardbench2 import METHODS

main_app = typer.Typer()
for _module in (score_cli, eval_cli, rerank_cli):
    _module.register(main_app)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = README.index(heading)
    nxt = README.find("\n## ", start + len(heading))
    return README[start: nxt if nxt != -1 else len(README)]


def _command(*path: str):
    cmd = typer.main.get_command(main_app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---- rerank: which flag breaks ties -------------------------------------------------------------


def test_readme_names_the_flag_that_breaks_rerank_ties(tmp_path):
    text = _flat(_section("## Best-of-N reranking"))
    m = re.search(r"A tie at the top is broken by a seeded uniform choice \(`(--[\w-]+)`\)", text)
    assert m, "the README's tie-break sentence moved: update this test"
    flag = m.group(1)
    # four answers of equal length: `longest` ties them all, so only the seed picks
    data = tmp_path / "tie.jsonl"
    data.write_text(json.dumps({"id": "t", "prompt": "P", "candidates": ["aa", "bb", "cc", "dd"]})
                    + "\n")
    picks = set()
    for seed in range(8):
        out = tmp_path / f"out{seed}"
        res = CliRunner().invoke(main_app, ["rerank", str(data), "--methods", "longest",
                                            "--out", str(out), flag, str(seed)])
        assert res.exit_code == 0, res.output
        (line,) = (out / "longest.jsonl").read_text().splitlines()
        picks.add(json.loads(line)["pick"])
    assert len(picks) > 1, f"{flag} does not change which tied candidate is picked"


# ---- RewardConfig(...) raises ConfigError ------------------------------------------------------


def test_readme_config_error_example_is_what_the_constructor_raises():
    m = re.search(r"^(RewardConfig\([^)]*\))\s+# (\w+): (.+)$", README, re.MULTILINE)
    assert m, "the README's RewardConfig error example moved: update this test"
    expr, kind, message = m.groups()
    with pytest.raises(Exception) as e:
        eval(expr, {"RewardConfig": RewardConfig})  # our own README line
    assert type(e.value).__name__ == kind == "ConfigError"
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)  # one line, not pydantic's multi-line report


# ---- eval rewardbench2: the default methods ----------------------------------------------------


def test_readme_lists_evals_default_methods():
    text = _flat(_section("## Evaluation: RewardBench 2"))
    m = re.search(r"\(`--methods`, default `([^`]+)`\)", text)
    assert m, "the README must name eval's default methods (it said 'all five' of six)"
    option = next(p for p in _command("eval", "rewardbench2").params if p.name == "methods")
    assert m.group(1) == option.default == ",".join(METHODS)


# ---- flags whose Python name differs -----------------------------------------------------------


def test_readme_documents_every_flag_that_is_not_its_field_name():
    fields = set(RewardConfig.model_fields) | set(RuntimeOptions.model_fields)
    renamed = {}
    for p in _command("score").params:
        if p.name in fields and p.param_type_name == "option":
            long = next(o for o in p.opts if o.startswith("--"))
            if long != "--" + p.name.replace("_", "-"):
                renamed[long] = p.name
    assert renamed  # --threads and --backend-api-key at least
    documented = dict(re.findall(r"`(--[\w-]+)` \(`(\w+)`", _flat(README)))
    for flag, field in renamed.items():
        assert documented.get(flag) == field, f"README must say {flag} is {field} in Python"


def test_the_python_names_of_renamed_flags_work():
    from fliprm import FlipReward

    rm = FlipReward("fake", n_threads=2, api_key="k")
    assert rm.runtime.n_threads == 2 and rm.runtime.api_key == "k"


# ---- --base-url: one server, except `score --ray` ------------------------------------------------


@pytest.mark.parametrize("path", [("eval", "rewardbench2"), ("rerank",)])
def test_base_url_help_of_eval_and_rerank_does_not_mention_ray(path):
    option = next(p for p in _command(*path).params if p.name == "base_url")
    assert "--ray" not in (option.help or "")


def test_base_url_help_of_score_mentions_ray():
    option = next(p for p in _command("score").params if p.name == "base_url")
    assert "--ray" in (option.help or "")


@pytest.mark.parametrize("args", [
    ["eval", "rewardbench2", "--data", str(Path(__file__).parent / "fixtures" / "rb2_tiny.jsonl")],
    ["rerank", str(Path(__file__).parent / "fixtures" / "bon_tiny.jsonl")],
])
def test_several_base_urls_are_refused_outside_score(args, tmp_path):
    res = CliRunner().invoke(main_app, [*args, "-b", "openai:m", "--base-url",
                                        "http://127.0.0.1:9/v1", "--base-url",
                                        "http://127.0.0.1:10/v1", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "--base-url" in res.output and "one server" in res.output
