"""``fliprm demo``: score built-in pairs and show that off-topic answers get lower rewards.

It scores with the default reward (pmi with the echo guard, or whatever ``--method`` /
``--preset`` say) and turns ``explain`` on for pmi and likelihood, so every reward comes with
the instruction the model reads out of the answer::

    fliprm demo                 # pmi + the inferred instructions
    fliprm demo --method f1     # the paper's F1 (the inferred instruction is the reward's own)
"""

from __future__ import annotations

import dataclasses
import time

import typer
from rich.console import Console
from rich.table import Table

from ..cache import ResponseCache
from ..errors import FlipError
from ..result import FlipResult
from ._config_options import CliSettings, fail, reward_options

PAIRS = [
    ("Write a haiku about autumn leaves.",
     "Autumn leaves falling,\nred and gold on the cold ground:\na haiku of fall."),
    ("Give me three tips for sleeping better.",
     ("Here are three tips for better sleep:\n1. Keep a regular sleep schedule.\n"
      "2. Avoid screens before bed.\n3. Keep your bedroom cool and dark.")),
    ("Explain what photosynthesis is in two sentences.",
     ("Photosynthesis is the process by which green plants use sunlight, water and carbon "
      "dioxide to make glucose. It releases oxygen as a by-product.")),
]

def register(app: typer.Typer) -> None:
    @app.command()
    @reward_options(preset="default", default_cache=False)
    def demo(settings: CliSettings) -> None:
        """Score each built-in answer against its own instruction and an unrelated one, with
        the inferred instruction beside each reward (explain is on for pmi and likelihood)."""
        console = Console()
        method = settings.config.method
        how = ("rewards word-F1 between the instruction it infers from the answer and the one "
               "given" if method == "f1" else
               f"rewards how much the answer explains the instruction ({method}); it also shows "
               "the instruction the model infers from the answer")
        console.print(f"[bold]fliprm demo[/bold]: FLIP reads each answer backwards and {how}.")
        # The demo explains its numbers: the inferred instruction beside every reward. That
        # generation sees only the answer, so scoring one answer against two instructions
        # costs one generation: the in-memory cache serves the second.
        config = settings.config if method == "f1" else settings.config.updated(explain=True)
        settings = dataclasses.replace(settings, config=config)
        try:
            rm = settings.reward() if settings.cache else settings.reward(cache=ResponseCache(":memory:"))
        except FlipError as exc:
            fail(str(exc))
        instr, resp, kind = [], [], []
        for i, (x, y) in enumerate(PAIRS):
            instr += [x, PAIRS[(i + 1) % len(PAIRS)][0]]
            resp += [y, y]
            kind += ["its own instruction", "an unrelated instruction"]
        t0 = time.perf_counter()
        with console.status("scoring (the first call loads the model)..."):
            results = rm.score(instr, resp)
        elapsed = time.perf_counter() - t0
        table = Table(show_lines=True)
        for col in ("answer", "scored against", "inferred instruction", "reward"):
            table.add_column(col)
        wins = 0
        for j, r in enumerate(results):
            if j % 2 == 0 and (r.reward or 0) > (results[j + 1].reward or 0):
                wins += 1
            reward = "error" if r.reward is None else f"{r.reward:.3f}"
            table.add_row(
                resp[j].splitlines()[0][:40] + "...", f"{kind[j]}:\n{instr[j]}",
                _clip(r.inferred_instruction or r.error or r.parse_error or _why_none(r)), reward,
            )
        console.print(table)
        console.print(
            f"Own instruction scored higher in {wins}/{len(PAIRS)} answers; "
            f"{len(results)} scores, {rm.engine.stats.calls} model calls, {elapsed:.1f} s "
            f"(model: {rm.backend.model_id})."
        )
        rm.close()
        if any(r.error for r in results):
            raise typer.Exit(1)


def _why_none(r: FlipResult) -> str:
    # a reward without its explanation still stands; the cell says why it has none
    why = r.extra.get("explain_error")
    return f"(no inferred instruction: {why})" if why else ""


def _clip(text: str, limit: int = 200) -> str:
    # a 0.5B model sometimes loops until max_tokens; the table shows the start of it
    if len(text) <= limit + 40:  # "... [3 more chars]" would be longer than the rest
        return text
    return text[:limit] + f"... [{len(text) - limit} more chars]"
