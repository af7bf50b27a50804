"""The bench's one set loader: every data file a bench script reads, and the scored sets.

The files live in ``../shared/data`` (see its README; override the folder with
``FLIPRM_BENCH_DATA``); the unit tests use ``tests/fixtures/bench_data``. A scored set comes back
as items ``{id, prompts, responses, labels?, attack?}``: candidate j is
``(prompts[j], responses[j])`` and candidate 0 is the right one (bon8: ``labels`` say how good
each is; hack: candidate 0 honest, 1 hacked)::

    from sets import load_items              # a script in bench/ imports its siblings by name
    items = load_items("ifbench", 20)        # items[0]["prompts"][1]: the mismatched prompt
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attacks import hack_items

__all__ = ["BENCH_ITEM_SETS", "FILES", "SETS", "BenchItem", "candidates", "data_dir", "data_path", "load_items",
           "load_set", "read_jsonl", "read_rows"]

#: every data file, by the name the scripts use for it
FILES = {
    "ifbench": "ifbench_sample_output.jsonl",  # prompt, response
    "focus4": "alpacaeval_focus4.jsonl",  # prompt, chosen, rejected (3 other prompts' answers)
    "pref4": "alpacaeval_pref4.jsonl",  # prompt, chosen, rejected (same prompt, worse)
    "bon8": "alpacaeval_bon8.jsonl",  # prompt, candidates (8), preference
    "hack": "alpacaeval_hack.jsonl",  # prompt, models, candidates (0 = honest)
    "ifeval-prompts": "ifeval_input_data.jsonl",  # key, prompt, instruction_id_list, kwargs
    "ifbench-prompts": "ifbench_test.jsonl",  # the same for IFBench
}

#: the sets the shoot-out scores (``hack`` is built from focus4 and the hack file)
SETS = ("focus4", "pref4", "ifbench", "bon8", "hack")


def data_dir() -> Path:
    """``FLIPRM_BENCH_DATA``, else ``../shared/data`` beside the repository (read at each call,
    so a test or a wrapper can point it elsewhere)."""
    env = os.environ.get("FLIPRM_BENCH_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(name: str) -> Path:
    """The path of data file ``name`` (a key of :data:`FILES`); a one-line exit if it is not there."""
    if name not in FILES:
        raise SystemExit(f"unknown data file {name!r}; choose from {', '.join(FILES)}")
    path = data_dir() / FILES[name]
    if not path.is_file():
        raise SystemExit(f"data file not found: {path} (set FLIPRM_BENCH_DATA)")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_rows(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of data file ``name``, in file order (the first ``limit``)."""
    rows = read_jsonl(data_path(name))
    return rows if limit is None else rows[:limit]


def candidates(row: dict[str, Any]) -> list[str]:
    """A best-of-4 row's answers, the chosen one first (``chosen`` is a list in some files)."""
    chosen = row["chosen"][0] if isinstance(row["chosen"], list) else row["chosen"]
    return [chosen, *row["rejected"]]


def load_items(name: str, n: int | None = None,
               attacks: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The first ``n`` items of set ``name`` (all when None); ``attacks`` keeps only those
    hacking attacks (``hack``; all when None).

    IFBench: item i scores response i against prompt i and prompt i+1 of the *limited* set
    (wrapping), so a smaller ``n`` still gives every item a mismatched prompt.
    """
    if name not in SETS:
        raise SystemExit(f"unknown set {name!r}; choose from {', '.join(SETS)}")
    if name == "hack":
        keep = None if attacks is None else set(attacks)
        items = hack_items(20 if n is None else n, read_rows("focus4"), read_rows("hack"))
        return [it for it in items if keep is None or it["attack"] in keep]
    rows = read_rows(name, n)
    if name == "ifbench":
        return [{"id": str(i), "prompts": [r["prompt"], rows[(i + 1) % len(rows)]["prompt"]],
                 "responses": [r["response"], r["response"]]} for i, r in enumerate(rows)]
    out = []
    for i, r in enumerate(rows):
        if name == "bon8":
            out.append({"id": str(r.get("id", i)), "prompts": [r["prompt"]] * len(r["candidates"]),
                        "responses": list(r["candidates"]), "labels": list(r["preference"])})
            continue
        cands = candidates(r)
        out.append({"id": str(r.get("id", i)), "prompts": [r["prompt"]] * len(cands),
                    "responses": cands})
    return out


#: the sets whose items are one right candidate among others (the RewardBench 2 tie rule)
BENCH_ITEM_SETS = ("ifbench", "focus4", "pref4")


@dataclass
class BenchItem:
    """An item as throughput.py reads it: ``pairs`` lists every (instruction, response) to
    score, ``group`` the indices of the competing candidates, the good one first."""

    set: str
    id: str
    pairs: list[tuple[str, str]]
    group: list[int] = field(default_factory=list)

    @property
    def responses(self) -> list[str]:
        return [y for _, y in self.pairs]


def load_set(name: str, limit: int | None = None) -> list[BenchItem]:
    """:func:`load_items` as :class:`BenchItem` objects (``ifbench``, ``focus4``, ``pref4``)."""
    if name not in BENCH_ITEM_SETS:
        raise SystemExit(f"unknown set {name!r}; choose from {', '.join(BENCH_ITEM_SETS)}")
    return [BenchItem(name, it["id"], list(zip(it["prompts"], it["responses"])),
                      list(range(len(it["responses"])))) for it in load_items(name, limit)]
