"""``fliprm eval rewardbench2``: FLIP and the judge baselines on RewardBench 2."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import FlipError
from ..eval.rewardbench2 import METHODS
from . import _eval_common as common
from ._config_options import CliSettings, fail
from ._progress import MetricsOpt, RunProgress

eval_app = typer.Typer(help="Evaluate FLIP against judge baselines.", no_args_is_help=True)


@eval_app.command("rewardbench2")
@common.judged_run_options
def rewardbench2(
    settings: CliSettings,
    data: Annotated[str | None, typer.Option(
        "--data", help="RB2-schema data: parquet, JSONL, a datasets save_to_disk folder or a "
        "Hugging Face dataset name; default: allenai/reward-bench-2 from the hub")] = None,
    split: common.SplitOpt = None,
    hf_config: common.HfConfigOpt = None,
    subsets: Annotated[str | None, typer.Option(
        "--subsets", help="comma list (default: Focus,Factuality,Precise IF,Math; 'all' = every subset)")] = None,
    ties: Annotated[bool, typer.Option("--ties", help="add the Ties subset (weighted formula)")] = False,
    methods: common.MethodsOpt = ",".join(METHODS),
    runs: Annotated[int, typer.Option("--runs", help="repeat each method; run r uses seed+r")] = 1,
    run_seed: Annotated[int, typer.Option("--run-seed", help="seed of run 0 (shuffles, tie-breaks)")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", help="first N items of each subset")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder")] = Path("runs/rewardbench2"),
    force: Annotated[bool, typer.Option("--force", help="start the output over")] = False,
    retry_errors: common.RetryErrorsOpt = False,
    metrics_jsonl: MetricsOpt = None,
) -> None:
    """Judge each item's chosen + rejected answers with every method; write per-item JSONL
    (resumable: a rerun skips finished (method, run, item)), report.md, results.json, plots.

    A record whose judge calls failed is an error record: left out of the accuracy, counted,
    and the exit code is 1; --retry-errors redoes them."""
    from ..eval.provenance import dataset_name, run_info
    from ..eval.rb2_data import DEFAULT_SUBSETS, HUB_DATASET, load_items
    from ..eval.rb2_report import write_report
    from ..eval.rewardbench2 import arun_rewardbench2
    from ..records import input_identity, read_records

    engine = None
    started, t0 = datetime.now(UTC), time.monotonic()
    try:
        names = common.parse_methods(methods)
        wanted: list[str] | None = list(DEFAULT_SUBSETS)
        if subsets == "all":
            wanted = None
        elif subsets:
            wanted = [s.strip() for s in subsets.split(",") if s.strip()]
        if ties and wanted is not None and "Ties" not in wanted:
            wanted.append("Ties")
        label = copy = None
        if data is not None:
            from ..hf_input import resolve_input

            resolved = resolve_input(data, split=split, config=hf_config)
            data, label, copy = str(resolved.path), resolved.label, not resolved.is_file
        items = load_items(data, subsets=wanted, limit=limit)
        typer.echo(f"{len(items)} items; methods: {', '.join(names)}; runs: {runs}", err=True)
        records_path = out / "records.jsonl"
        engine, make = common.judges_for(settings, names)
        conc = settings.runtime.concurrency or (engine.max_concurrency if engine else 1)
        ident = input_identity(data) if data else {"path": HUB_DATASET, "sha256": None}
        if copy:  # a dataset's parquet copy: name the dataset, not the copy
            ident["path"] = label

        async def main(bar: RunProgress) -> None:
            def on_record(rec: dict[str, Any]) -> None:
                bar.describe(f"{rec['method']} run {rec['run']}")
                bar.item(rec["credit"], error=bool(rec.get("error")))

            try:
                await arun_rewardbench2(items, make, names, runs=runs, seed=run_seed,
                                        out=records_path, concurrency=conc,
                                        input_identity=ident, force=force,
                                        retry_errors=retry_errors,
                                        on_todo=bar.add_total, on_record=on_record)
            finally:
                if engine is not None:
                    await engine.aclose()

        with RunProgress("eval", metric="accuracy", metrics_jsonl=metrics_jsonl) as bar:
            asyncio.run(main(bar))
        # Report on the current selection only (the file may hold other methods or items).
        ids = {it.id for it in items}
        recs = [r for _, r in read_records(records_path) if isinstance(r, dict)
                and r.get("method") in names and r.get("item_id") in ids and r.get("run", 0) < runs]
        meta = {"data": label if data else f"{HUB_DATASET} (hub)",
                "methods": ",".join(names), "runs": runs, "run_seed": run_seed, "limit": limit,
                "settings": {m: make(m, run_seed).identity() for m in names}}
        run = run_info(backend=settings.config.backend_kind if engine is not None else None,
                       seconds=time.monotonic() - t0, started=started)
        summary = write_report(recs, out, meta=meta, run=run,
                               dataset=dataset_name(data, "RewardBench 2"))
    except FlipError as exc:
        fail(str(exc))
    if summary.get("dry_run"):
        typer.echo(f"{summary['notice']}.")
    for name, m in summary["methods"].items():
        acc = "  n/a" if m["n_scored"] == 0 else f"{m['accuracy'] * 100:5.1f}"
        typer.echo(f"{name:16s} accuracy {acc}%  tie rate "
                   f"{m['tie_rate'] * 100:5.1f}%  {m['seconds_per_item']:.1f} s/item  "
                   f"({m['n_scored']} scored, {m['n_failed']} failed)")
    typer.echo(f"report: {out / 'report.md'}")
    # the records of this selection, this run's and earlier runs' (as `fliprm score` does)
    raise typer.Exit(1 if common.report_failures(recs) else 0)


@eval_app.command("report")
def report(
    dirs: Annotated[list[Path], typer.Argument(
        help="output folders of 'fliprm eval rewardbench2' or 'fliprm rerank' (or their "
        "results.json / bon_results.json)")],
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="also write the Markdown to this file")] = None,
) -> None:
    """Merge several runs into one leaderboard (Markdown on stdout): a table per kind, best
    first, with 95% CIs and the spread across runs, ready to paste into a paper or README."""
    from ..eval.leaderboard import collect, leaderboard_markdown

    try:
        text = leaderboard_markdown(collect(dirs))
    except FlipError as exc:
        fail(str(exc))
    typer.echo(text)
    if out is not None:
        try:
            out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
