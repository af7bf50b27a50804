"""``fliprm rerank``: best-of-N with any judge, from a JSONL/parquet of prompts + candidates."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import FlipError
from . import _eval_common as common
from ._config_options import CliSettings, fail
from ._progress import MetricsOpt, RunProgress


@common.judged_run_options
def rerank(
    settings: CliSettings,
    input: Annotated[str, typer.Argument(
        help="JSONL or parquet, a datasets save_to_disk folder or a Hugging Face dataset "
        "name: one prompt + candidates per row")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder")] = Path("runs/rerank"),
    methods: common.MethodsOpt = common.DEFAULT_JUDGE,
    prompt_field: Annotated[str, typer.Option("--prompt-field")] = "prompt",
    candidates_field: Annotated[str, typer.Option("--candidates-field")] = "candidates",
    id_field: Annotated[str, typer.Option("--id-field")] = "id",
    label_field: Annotated[str | None, typer.Option(
        "--label-field", help="list parallel to candidates, higher = better (e.g. preference)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="first N rows")] = None,
    run_seed: Annotated[int, typer.Option("--run-seed", help="tie-break and shuffle seed")] = 0,
    force: Annotated[bool, typer.Option("--force", help="start the output over")] = False,
    retry_errors: common.RetryErrorsOpt = False,
    verifier: Annotated[str | None, typer.Option(
        "--verifier", help="ifeval|ifbench: label every candidate with the instruction checkers "
        "(rows need instruction_id_list and kwargs); writes verify_report.md")] = None,
    metrics_jsonl: MetricsOpt = None,
    split: common.SplitOpt = None,
    hf_config: common.HfConfigOpt = None,
) -> None:
    """Pick the best candidate per row with each method. Writes OUT/<method>.jsonl (every score
    and the pick; resumable) and, with --label-field, bon_report.md / bon_results.json /
    bon_curve.png comparing the picks with a random pick and the oracle for N = 1, 2, 4, ...
    (a pool of N is a seeded random subset of each row's candidates).

    With --verifier ifeval|ifbench every candidate is checked against its row's
    instruction_id_list/kwargs (needs the verify extra), and verify_report.md /
    verify_results.json give each method's pass rates (prompt- and instruction-level, strict
    and loose, 95% CIs) beside the longest, a random and the oracle pick.

    Ties at the top are broken by a seeded uniform choice among the tied candidates
    (--run-seed). A row whose judge calls failed is an error record with no pick: left out of
    the mean label, counted, and the exit code is 1; --retry-errors redoes those rows."""
    from ..eval.best_of_n import arerank, load_rows
    from ..eval.bon_report import write_bon_report
    from ..eval.provenance import dataset_name, run_info
    from ..records import input_identity, read_records

    started, t0 = datetime.now(UTC), time.monotonic()
    try:
        names = common.parse_methods(methods)
        if verifier not in (None, "ifeval", "ifbench"):
            fail(f"--verifier {verifier!r}: use ifeval or ifbench")
        from ..hf_input import resolve_input

        resolved = resolve_input(input, split=split, config=hf_config)
        rows = load_rows(resolved.path, prompt_field=prompt_field,
                         candidates_field=candidates_field, id_field=id_field,
                         label_field=label_field, limit=limit, instructions=verifier is not None)
        # checked before any model call: a bad row fails now, not after the reranking
        checked = _check_candidates(rows, verifier) if verifier else None
        engine, make = common.judges_for(settings, names)
        conc = settings.runtime.concurrency or (engine.max_concurrency if engine else 1)
        ident = input_identity(resolved.path)
        if not resolved.is_file:  # a dataset's parquet copy: name the dataset, not the copy
            ident["path"] = resolved.label

        async def main(bar: RunProgress) -> None:
            def on_record(rec: dict[str, Any]) -> None:
                bar.item(rec.get("picked_label"), error=bool(rec.get("error")))

            try:
                for name in names:
                    bar.describe(f"rerank {name}")
                    await arerank(rows, make(name, run_seed), out=out / f"{name}.jsonl",
                                  concurrency=conc, input_identity=ident, force=force,
                                  retry_errors=retry_errors,
                                  on_todo=bar.add_total, on_record=on_record)
            finally:
                if engine is not None:
                    await engine.aclose()

        metric = "mean label" if label_field else "picked"
        with RunProgress("rerank", metric=metric, metrics_jsonl=metrics_jsonl) as bar:
            asyncio.run(main(bar))
        ids = {r["id"] for r in rows}
        records = [r for name in names for _, r in read_records(out / f"{name}.jsonl")
                   if isinstance(r, dict) and r.get("id") in ids]
        run = run_info(backend=settings.config.backend_kind if engine is not None else None,
                       seconds=time.monotonic() - t0, started=started)
        summary = {}
        if label_field:
            meta = {"input": resolved.label, "methods": ",".join(names), "limit": limit,
                    "run_seed": run_seed,
                    "settings": {m: make(m, run_seed).identity() for m in names}}
            summary = write_bon_report(records, out, meta=meta, run=run,
                                       dataset=dataset_name(resolved.path))
        if checked is not None:
            verified = _write_verified(rows, records, checked, out, verifier, resolved.label,
                                       names, run=run, dataset=dataset_name(resolved.path))
    except FlipError as exc:
        fail(str(exc))
    dry = summary or (verified if checked is not None else {})
    if dry.get("dry_run"):
        typer.echo(f"{dry['notice']}.")
    for name, m in summary.get("methods", {}).items():
        label = "  n/a" if m["n"] == 0 else f"{m['mean_label']:.3f}"
        typer.echo(f"{name:16s} mean label {label}  tie rate "
                   f"{m['tie_rate'] * 100:.1f}%  {m['seconds_per_item']:.1f} s/row  "
                   f"({m['n']} scored, {m['n_failed']} failed)")
    if summary:
        typer.echo(f"random {summary['curve']['random'][-1]:.3f}  oracle "
                   f"{summary['curve']['oracle'][-1]:.3f}\nreport: {out / 'bon_report.md'}")
    if checked is not None:
        _echo_verified(verified, out)
    elif not summary:
        typer.echo(f"picks: {', '.join(str(out / f'{n}.jsonl') for n in names)}")
    # this selection's records, this run's and earlier runs' (as `fliprm score` does)
    raise typer.Exit(1 if common.report_failures(records) else 0)


def _check_candidates(
    rows: list[dict[str, Any]], suite: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Verdicts per row id (one per candidate), and the rows a checker cannot give a verdict for."""
    from ..errors import InputError
    from ..verifiers import VerifierUnavailable, verify

    verdicts: dict[str, list[dict[str, Any]]] = {}
    excluded: dict[str, str] = {}
    for row in rows:
        try:
            verdicts[row["id"]] = [asdict(verify(row, c, suite)) for c in row["candidates"]]
        except VerifierUnavailable as exc:
            excluded[row["id"]] = str(exc)
        except InputError as exc:
            raise InputError(f"{row['where']}: {exc}") from None
    return verdicts, excluded


def _write_verified(rows: list[dict[str, Any]], records: list[dict[str, Any]],
                    checked: tuple[dict[str, list[dict[str, Any]]], dict[str, str]],
                    out: Path, suite: str, input: str, names: list[str], *,
                    run: dict[str, Any] | None = None,
                    dataset: str | None = None) -> dict[str, Any]:
    from ..eval.bon_report import write_verified_report

    verdicts, excluded = checked
    excluded = dict(excluded)
    # a row a method has no verdict on (failed judge calls) is left out for every method: the
    # paired comparisons need the same rows, and a pick guessed from no scores is no pick
    failed: dict[str, list[str]] = {}
    for rec in records:
        if rec.get("error") and rec["id"] in verdicts:
            failed.setdefault(rec["id"], []).append(rec["method"])
    for rid, methods in failed.items():
        excluded[rid] = (f"judge calls failed ({', '.join(methods)}); --retry-errors "
                         "redoes them")
    pools = {r["id"]: {"id": r["id"], "verdicts": verdicts[r["id"]], "scores": {}, "picks": {},
                       "lengths": [len(c) for c in r["candidates"]]}
             for r in rows if r["id"] in verdicts and r["id"] not in failed}
    for rec in records:
        if rec["id"] in pools:
            pools[rec["id"]]["scores"][rec["method"]] = rec["scores"]
            pools[rec["id"]]["picks"][rec["method"]] = rec["pick"]
    meta = {"input": input, "methods": ",".join(names), "verifier": suite}
    return write_verified_report(list(pools.values()), out, suite=suite, meta=meta,
                                 excluded=excluded, run=run, dataset=dataset)


def _echo_verified(s: dict[str, Any], out: Path) -> None:
    for rid, why in s["excluded"].items():
        typer.echo(f"not checked: row {rid}: {why}", err=True)
    for name, m in s.get("methods", {}).items():
        typer.echo(f"{name:16s} prompt strict {m['prompt_strict']['rate'] * 100:5.1f}%  "
                   f"loose {m['prompt_loose']['rate'] * 100:5.1f}%  inst strict "
                   f"{m['inst_strict']['rate'] * 100:5.1f}%  loose "
                   f"{m['inst_loose']['rate'] * 100:5.1f}%")
    typer.echo(f"report: {out / 'verify_report.md'}")


def register(app: typer.Typer) -> None:
    app.command("rerank")(rerank)
