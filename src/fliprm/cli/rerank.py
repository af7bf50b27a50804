"""``fliprm rerank``: best-of-N with any judge, from a JSONL/parquet of prompts + candidates."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import FlipError
from ._config_options import CliSettings, fail, reward_options
from ._eval_common import EXCLUDE, HfConfigOpt, MethodsOpt, SplitOpt, judges_for, parse_methods
from ._progress import MetricsOpt, RunProgress


@reward_options(preset="default", exclude=EXCLUDE)
def rerank(
    settings: CliSettings,
    input: Annotated[str, typer.Argument(
        help="JSONL or parquet, a datasets save_to_disk folder or a Hugging Face dataset "
        "name: one prompt + candidates per row")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder")] = Path("runs/rerank"),
    methods: MethodsOpt = "flip",
    prompt_field: Annotated[str, typer.Option("--prompt-field")] = "prompt",
    candidates_field: Annotated[str, typer.Option("--candidates-field")] = "candidates",
    id_field: Annotated[str, typer.Option("--id-field")] = "id",
    label_field: Annotated[str | None, typer.Option(
        "--label-field", help="list parallel to candidates, higher = better (e.g. preference)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="first N rows")] = None,
    run_seed: Annotated[int, typer.Option("--run-seed", help="tie-break and shuffle seed")] = 0,
    force: Annotated[bool, typer.Option("--force", help="start the output over")] = False,
    metrics_jsonl: MetricsOpt = None,
    split: SplitOpt = None,
    hf_config: HfConfigOpt = None,
) -> None:
    """Pick the best candidate per row with each method. Writes OUT/<method>.jsonl (every score
    and the pick; resumable) and, with --label-field, bon_report.md / bon_results.json /
    bon_curve.png comparing the picks with a random pick and the oracle for N = 1, 2, 4, ...
    (a pool of N is a seeded random subset of each row's candidates).

    Ties at the top are broken by a seeded uniform choice among the tied candidates."""
    from ..eval.best_of_n import arerank, load_rows
    from ..eval.bon_report import write_bon_report
    from ..eval.provenance import dataset_name, run_info
    from ..records import input_identity, read_records

    started, t0 = datetime.now(UTC), time.monotonic()
    try:
        names = parse_methods(methods)
        from ..hf_input import resolve_input

        resolved = resolve_input(input, split=split, config=hf_config)
        rows = load_rows(resolved.path, prompt_field=prompt_field, candidates_field=candidates_field,
                         id_field=id_field, label_field=label_field, limit=limit)
        be, make = judges_for(settings, names)
        conc = settings.runtime.concurrency or (be.max_concurrency if be else 1)
        ident = input_identity(resolved.path)
        if not resolved.is_file:  # a dataset's parquet copy: name the dataset, not the copy
            ident["path"] = resolved.label

        async def main(bar: RunProgress) -> None:
            def on_record(rec: dict[str, Any]) -> None:
                bar.item(rec.get("picked_label"), error=bool(rec["errors"]))

            try:
                for name in names:
                    bar.describe(f"rerank {name}")
                    await arerank(rows, make(name, run_seed), out=out / f"{name}.jsonl",
                                  concurrency=conc, input_identity=ident, force=force,
                                  on_todo=bar.add_total, on_record=on_record)
            finally:
                if be is not None:
                    await be.aclose()

        metric = "mean label" if label_field else "picked"
        with RunProgress("rerank", metric=metric, metrics_jsonl=metrics_jsonl) as bar:
            asyncio.run(main(bar))
        ids = {r["id"] for r in rows}
        records = [r for name in names for _, r in read_records(out / f"{name}.jsonl")
                   if isinstance(r, dict) and r.get("id") in ids]
        summary = {}
        if label_field:
            meta = {"input": resolved.label, "methods": ",".join(names), "limit": limit,
                    "run_seed": run_seed,
                    "settings": {m: make(m, run_seed).identity() for m in names}}
            run = run_info(backend=settings.config.backend_kind if be is not None else None,
                           seconds=time.monotonic() - t0, started=started)
            summary = write_bon_report(records, out, meta=meta, run=run,
                                       dataset=dataset_name(resolved.path))
    except FlipError as exc:
        fail(str(exc))
    if summary.get("dry_run"):
        typer.echo(f"{summary['notice']}.")
    for name, m in summary.get("methods", {}).items():
        typer.echo(f"{name:16s} mean label {m['mean_label']:.3f}  tie rate "
                   f"{m['tie_rate'] * 100:.1f}%  {m['seconds_per_item']:.1f} s/row")
    if summary:
        typer.echo(f"random {summary['curve']['random'][-1]:.3f}  oracle "
                   f"{summary['curve']['oracle'][-1]:.3f}\nreport: {out / 'bon_report.md'}")
    else:
        typer.echo(f"picks: {', '.join(str(out / f'{n}.jsonl') for n in names)}")


def register(app: typer.Typer) -> None:
    app.command("rerank")(rerank)
