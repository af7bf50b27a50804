"""bench/ is one harness: one set loader, no import cycle, no sys.path edits, no private fliprm
imports, statistics from ``fliprm.eval``, and every script named in bench/README.md.

The scripts run as ``python bench/<script>.py``: Python puts bench/ on the path, so they import
their siblings by name. Here bench/ is put on the path the same way (``monkeypatch``)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fliprm.eval.rb2_scoring import item_credit
from fliprm.eval.stats import bootstrap_ci, paired_diff
from fliprm.judges import top_indices

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DATA = Path(__file__).parent / "fixtures" / "bench_data"
MODULES = sorted(BENCH.glob("*.py"))
NAMES = {p.stem for p in MODULES}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path) -> list[str]:
    """Every module name an import statement in ``path`` names (at any depth)."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


@pytest.fixture
def bench(monkeypatch):
    """bench/ on the path (as ``python bench/x.py`` has it), the fixture data, fresh modules."""
    monkeypatch.setenv("FLIPRM_BENCH_DATA", str(DATA))
    monkeypatch.syspath_prepend(str(BENCH))
    for name in NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module


# ---- structure -------------------------------------------------------------------------------

def test_no_import_cycle_between_bench_modules():
    graph = {p.stem: {m.split(".")[0] for m in _imports(p)} & NAMES - {p.stem} for p in MODULES}
    done: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"import cycle: {' -> '.join((*stack, node))}"
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, (*stack, node))
        done.add(node)

    for name in sorted(graph):
        visit(name, ())


def test_no_sys_path_edits_in_bench():
    edits = [f"{p.name}:{n.lineno}" for p in MODULES for n in ast.walk(_tree(p))
             if isinstance(n, ast.Attribute) and n.attr == "path"
             and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert edits == []


def test_no_private_fliprm_imports_in_bench():
    private = [f"{p.name}: {m}" for p in MODULES for m in _imports(p)
               if m.split(".")[0] == "fliprm" and any(part.startswith("_") for part in m.split("."))]
    assert private == []


def test_one_set_loader_names_the_data_files():
    """Only bench/sets.py knows the data files' names; every script asks it."""
    owners = {p.name for p in MODULES for n in ast.walk(_tree(p))
              if isinstance(n, ast.Constant) and isinstance(n.value, str)
              and n.value.endswith(".jsonl") and n.value.startswith(("alpacaeval_", "ifbench_",
                                                                      "ifeval_"))}
    assert owners == {"sets.py"}


def test_statistics_are_not_copied_into_bench():
    """Bootstrap CIs, paired differences and the tie rule come from fliprm.eval."""
    defs = {n.name for p in MODULES for n in ast.walk(_tree(p)) if isinstance(n, ast.FunctionDef)}
    assert not {d for d in defs if "bootstrap" in d or d in ("rb2_score", "wilson", "_tied")}


def test_readme_lists_every_bench_module_with_a_command():
    readme = (BENCH / "README.md").read_text(encoding="utf-8")
    table = readme.split("## ", 1)[0]  # the overview above the first section
    missing = [p.name for p in MODULES if p.name != "_common.py" and f"`{p.name}`" not in table]
    assert missing == []
    scripts = [p for p in MODULES if "__main__" in p.read_text(encoding="utf-8")]
    no_command = [p.name for p in scripts if f"python bench/{p.name}" not in readme]
    assert no_command == []


def test_every_script_starts_from_any_folder(tmp_path):
    """``python bench/x.py --help`` from another folder: sibling imports need no path edits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FLIPRM_BENCH_DATA": str(DATA)}
    scripts = [p for p in MODULES if "__main__" in p.read_text(encoding="utf-8")]
    procs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in scripts}
    failed = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or "usage:" not in out:
            failed[name] = err.strip().splitlines()[-1:] or out[:200]
    assert failed == {}


# ---- behaviour ---------------------------------------------------------------------------------

def test_hacking_calls_shootout_main_with_its_argv(bench, monkeypatch):
    shootout, hacking = bench("shootout"), bench("hacking")
    seen = []
    monkeypatch.setattr(shootout, "main", lambda argv=None: seen.append(argv))
    argv_before = list(sys.argv)
    hacking.main(["--n", "7", "--rows", "rl", "--report"])
    hacking.main(["--rows", "rl"])
    assert seen == [["--sets", "hack=7", "--rows", "rl", "--report"], ["--sets", "hack=20", "--rows", "rl"]]
    assert sys.argv == argv_before
    with pytest.raises(SystemExit, match="--n needs"):
        hacking.main(["--rows", "rl", "--n"])


def test_load_items_one_format_for_every_set(bench):
    sets = bench("sets")
    ifb = sets.load_items("ifbench", 2)
    # the mismatched prompt wraps inside the limited set
    assert ifb == [
        {"id": "0", "prompts": ["Prompt 0.", "Prompt 1."], "responses": ["Response 0."] * 2},
        {"id": "1", "prompts": ["Prompt 1.", "Prompt 0."], "responses": ["Response 1."] * 2},
    ]
    focus = sets.load_items("focus4", 2)
    assert [it["id"] for it in focus] == ["f0", "f1"]
    assert focus[1]["responses"] == ["Paris.", "Apple.", "Blue.", "Nine."]
    assert focus[1]["prompts"] == ["Name a city."] * 4
    bon = sets.load_items("bon8", 5)
    assert bon[0]["labels"][-1] == 2.0 and len(bon[0]["responses"]) == 8
    with pytest.raises(SystemExit, match="unknown set 'nope'"):
        sets.load_items("nope", 1)


def test_hack_items_from_the_loader(bench):
    sets = bench("sets")
    items = sets.load_items("hack", 2)
    by_attack: dict[str, list[dict]] = {}
    for it in items:
        by_attack.setdefault(it["attack"], []).append(it)
    assert sorted(by_attack) == sorted(bench("attacks").ATTACKS)
    # prompts over 400 characters are skipped: the pairs use f0, f1 (f2 is too long)
    assert [it["prompts"][0] for it in by_attack["restate"]] == ["Name a fruit.", "Name a city."]
    assert by_attack["restate"][0]["responses"][1].startswith("Name a fruit.\n\n")
    # gpt4_gamed: only the 10-character cuts (h0, h2), never h1's whole answer
    assert [it["id"] for it in by_attack["gpt4_gamed"]] == ["gpt4_gamed-0", "gpt4_gamed-2"]
    assert [it["id"] for it in sets.load_items("hack", 2, {"null_model"})] == [
        "null_model-0", "null_model-1"]


def test_bench_item_view_matches_the_items(bench):
    sets = bench("sets")
    [item] = sets.load_set("pref4", 1)
    assert item.pairs == [("Write a haiku.", y) for y in ("Good haiku.", "Bad 1.", "Bad 2.", "Bad 3.")]
    assert item.group == [0, 1, 2, 3] and item.id == "p0" and item.set == "pref4"


def _records(folder: Path, row: str, name: str, recs: list[dict]) -> None:
    (folder / row).mkdir(parents=True, exist_ok=True)
    base = {"seconds": 2.0, "prompt_tokens": 10, "completion_tokens": 5, "parse_failures": 0,
            "errors": []}
    (folder / row / f"{name}.jsonl").write_text(
        "".join(json.dumps({**base, **r}) + "\n" for r in recs))


def test_shootout_report_uses_fliprm_eval_statistics(bench, tmp_path, capsys):
    shootout = bench("shootout")
    a = [[0.9, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, None], [0.1, 0.9, 0.2, 0.3], [None, None, None, None]]
    b = [[0.9, 0.2, 0.1, 0.1], [0.9, 0.1, 0.2, 0.3], [0.2, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]]
    _records(tmp_path, "flip-short", "pref4", [{"id": str(i), "rewards": r} for i, r in enumerate(a)])
    _records(tmp_path, "rl", "pref4", [{"id": str(i), "rewards": r} for i, r in enumerate(b)])
    shootout.main(["--report", "--markdown", "--rows", "flip-short,rl", "--sets", "pref4=4",
                   "--out", str(tmp_path), "--ref", "rl"])
    lines = capsys.readouterr().out.splitlines()
    credit_a = [item_credit(top_indices(r)) for r in a]
    credit_b = [item_credit(top_indices(r)) for r in b]
    assert credit_a == [1.0, 0.5, 0.0, 0.25]  # the RB2 tie rule: None ranks last, all None tie
    lo, hi = bootstrap_ci([credit_a])
    d, dlo, dhi = paired_diff(credit_a, credit_b)
    assert lines[2] == (f"| pref4 | flip-short | 4 | 0.438 [{lo:.2f},{hi:.2f}] | "
                        f"{d:+.3f} [{dlo:+.3f},{dhi:+.3f}] | 2 | 2.0 | 0.500 | 15 | 0 | 0 |")
    assert lines[3].startswith("| pref4 | rl | 4 | 0.750 [")


def test_hack_pivot_counts_ties_for_the_attacker(bench, tmp_path, capsys):
    hacking = bench("hacking")
    recs = [{"id": f"empty-{i}", "attack": "empty", "rewards": r}
            for i, r in enumerate([[0.5, 0.5], [0.9, 0.1], [None, 0.2], [0.3, None]])]
    _records(tmp_path, "rl", "hack", recs)
    hacking.main(["--n", "4", "--report", "--pivot", "--rows", "rl", "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| empty | 4 | 0.50 [")
    assert out[-1] == "| **worst attack** | | **0.50** |"


def test_paired_diff_is_the_bootstrap_of_the_per_item_difference():
    d, lo, hi = paired_diff([1.0, 1.0, 0.0, 0.5], [0.0, 1.0, 0.0, 1.0])
    assert d == pytest.approx(0.125)
    assert (lo, hi) == bootstrap_ci([[1.0, 0.0, 0.0, -0.5]])
    with pytest.raises(ValueError, match="same length"):
        paired_diff([1.0], [1.0, 0.0])


def test_throughput_reference_row_scores_a_pair_with_one_call(bench):
    """The reference path (F1, template flip, raw fallback) credits an IFBench pair with one
    call: the second instruction is scored on the same completion, from the item's own cache."""
    import asyncio

    from fliprm.backends.fake import FakeBackend

    throughput, sets = bench("throughput"), bench("sets")

    def reply(req):  # infers "Prompt 0." for every response: right for item 0 only
        return '{"REASONING": "r", "INFERRED INSTRUCTION": "Prompt 0."}'

    backend = FakeBackend(replies=reply)
    items = sets.load_set("ifbench", 2)
    row = asyncio.run(throughput.run_row("reference", backend, items, None))
    assert len(backend.calls) == 2 and row.calls == 2  # one per response, not per pair
    assert row.served_from_cache == 2 and row.errors == 0
    # F1 to the own / the next prompt: item 0 1.0 vs 0.5 (right), item 1 0.5 vs 1.0 (wrong)
    assert row.scores == [1.0, 0.0] and row.ties == 0
    assert all(c.forced_text is None for c in backend.calls)


def test_throughput_rows_name_their_method(bench):
    """Since the library default is pmi + guard, the F1 rows say so; only ``default`` follows
    the library."""
    rows = bench("throughput").ROWS
    f1 = [r for r in rows if r == "reference" or r.startswith(("short64", "cache-warm"))]
    assert all(rows[r][0]["method"] == "f1" and rows[r][0]["mask_echo"] is False for r in f1)
    assert all(rows[r][0]["mask_echo"] is False for r in rows if r.startswith("likelihood"))
    assert rows["default"][0] == {}
