"""``fliprm score``: one pair from flags, or a whole file (or stdin) into resumable JSONL."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from ..batch import Fields, Summary, score_file
from ..config import RayOptions
from ..errors import BackendError, FlipError, format_error_counts
from ._config_options import CliSettings, err, fail, flag_name, ray_options, reward_options
from ._eval_common import HfConfigOpt, SplitOpt
from ._progress import MetricsOpt, RunProgress

if TYPE_CHECKING:
    from ..scale import RaySummary


def _count_lines(path: Path) -> int | None:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows  # the footer only: an ETA for parquet
        except Exception:  # noqa: BLE001 - no count is fine: the bar just has no total
            return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) - (1 if path.suffix.lower() == ".csv" else 0)


def summary_table(title: str, rows: list[tuple[str, Any]], first_errors: list[str]) -> None:
    """The end-of-run table every file-scoring path prints."""
    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, str(v))
    err.print(t)
    for e in first_errors:
        err.print(f"[red]error:[/red] {escape(str(e))}")


def _common_rows(s: Summary) -> list[tuple[str, Any]]:
    mean = s.mean_reward
    return [
        ("mean reward", "n/a" if mean is None else f"{mean:.4f}"),
        ("parse failures", s.parse_failures),
        ("errors (this run)", format_error_counts(s.error_kinds)),
        ("errors (earlier runs, still in the output)", format_error_counts(s.error_kinds_before)),
        ("cache hits", s.cache_hits),
        ("prompt / output tokens", f"{s.prompt_tokens} / {s.completion_tokens}"),
        ("items/s", f"{s.items_per_s:.3f}"),
        ("elapsed", f"{s.elapsed_s:.1f} s"),
    ]


def print_summary(s: Summary, output: Path) -> None:
    rows = [("items in input", s.total), ("scored now", s.scored),
            ("skipped (already in output)", s.skipped), *_common_rows(s)]
    hint = ["rerun with --retry-errors to redo the failed lines"] if s.errors_total else []
    summary_table(f"fliprm score -> {escape(str(output))}", rows, s.first_errors + hint)


def print_ray_summary(s: RaySummary, output: Path) -> None:
    rows = [("shards", s.shards_total), ("shards written now", s.shards_written),
            ("shards skipped (already there)", s.shards_skipped), ("rows scored now", s.scored),
            *_common_rows(s)]
    summary_table(f"fliprm score --ray -> {escape(str(output))}", rows, s.first_errors)


def _spool_stdin() -> Path:
    """``-``: copy stdin to a temporary file, so the input has an identity to resume against."""
    fd, name = tempfile.mkstemp(prefix="fliprm-stdin-", suffix=".jsonl")
    with open(fd, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f)
    return Path(name)


def register(app: typer.Typer) -> None:
    @app.command()
    @reward_options(preset="default", replicas=True)
    @ray_options()
    def score(
        settings: CliSettings,
        ray_options: RayOptions,
        input: Annotated[
            str | None,
            typer.Argument(help="JSONL, CSV or parquet file, a datasets save_to_disk folder, "
                           "a Hugging Face dataset name, or - for JSONL on stdin"),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option("-o", "--out", "--output",
                         help="results: .jsonl, .csv or .parquet, sorted by input line "
                         "(--ray: a folder of parquet shards)"),
        ] = None,
        instruction: Annotated[str | None, typer.Option("--instruction", "-i")] = None,
        response: Annotated[str | None, typer.Option("--response", "-r")] = None,
        context: Annotated[str | None, typer.Option("--context")] = None,
        id_field: Annotated[str, typer.Option("--id-field")] = "id",
        instruction_field: Annotated[str, typer.Option("--instruction-field")] = "instruction",
        response_field: Annotated[str, typer.Option("--response-field")] = "response",
        context_field: Annotated[str, typer.Option("--context-field")] = "context",
        messages_field: Annotated[str, typer.Option("--messages-field")] = "messages",
        retry_errors: Annotated[
            bool, typer.Option("--retry-errors", help="redo the lines that failed before")
        ] = False,
        force: Annotated[
            bool, typer.Option("--force", help="start the output over (its results are lost)")
        ] = False,
        limit: Annotated[int | None, typer.Option("--limit", help="first N input lines only")] = None,
        keep_columns: Annotated[str | None, typer.Option(
            "--keep-columns", help="input columns copied into each output row: a comma list, "
            "or 'all'")] = None,
        metrics_jsonl: MetricsOpt = None,
        split: SplitOpt = None,
        hf_config: HfConfigOpt = None,
        ray: Annotated[bool, typer.Option(
            "--ray", help="score on Ray (needs the ray extra): -o is a folder of parquet "
            "shards, resumable by shard")] = False,
    ) -> None:
        """Score (instruction, response) pairs with FLIP.

        One pair: fliprm score -i "Name the capital of France." -r "Paris."
        A file:   fliprm score pairs.jsonl -o scores.jsonl   (re-run to resume)
        On Ray:   fliprm score pairs.jsonl -o scores/ --ray --actors 2   (parquet shards)
        """
        single = instruction is not None or response is not None
        _check_usage(input, out, single, ray, ray_options, settings)
        fields = Fields(id_field, instruction_field, response_field, context_field, messages_field)
        path, label = _resolve_input(input, split, hf_config)
        if ray:
            if path is None:
                fail("--ray reads a file every node can see, not stdin")
            assert out is not None
            _score_ray(path, out, settings, ray_options, fields=fields,
                       retry_errors=retry_errors, force=force, limit=limit)
        try:
            reward = settings.reward()
        except FlipError as exc:
            fail(str(exc))
        if single:
            _score_one(reward, instruction, response, context)
        assert out is not None
        keep = (keep_columns.strip() if keep_columns and keep_columns.strip() == "all"
                else [c.strip() for c in (keep_columns or "").split(",") if c.strip()])
        spooled = None
        try:
            if path is None:
                path = spooled = _spool_stdin()
            summary = _score_file(reward, path, out, fields, retry_errors, force, limit,
                                  label="-" if spooled else label, keep=keep or None,
                                  metrics_jsonl=metrics_jsonl)
        except FlipError as exc:
            fail(str(exc))
        finally:
            reward.close()
            if spooled is not None:
                spooled.unlink(missing_ok=True)
        print_summary(summary, out)
        raise typer.Exit(1 if summary.errors_total else 0)


def _check_usage(input: str | None, out: Path | None, single: bool, ray: bool,
                 ray_options: RayOptions, settings: CliSettings) -> None:
    """One pair or one file; the Ray flags and several --base-url only with --ray."""
    if single == (input is not None):
        fail("give either INPUT (with -o) or --instruction and --response")
    if input is not None and out is None:
        fail("scoring a file needs -o OUTPUT.jsonl (with --ray: -o DIR)")
    if not ray:
        given = [flag_name(RayOptions, k) for k in RayOptions.model_fields
                 if k in ray_options.model_fields_set]
        if given:
            fail(f"{', '.join(given)} only apply with --ray")
        if len(settings.base_urls) > 1:
            fail("several --base-url (one per replica) need --ray")
    elif single:
        fail("--ray scores a file: give INPUT and -o DIR")


def _resolve_input(input: str | None, split: str | None,
                   hf_config: str | None) -> tuple[Path | None, str | None]:
    """The file to read (None: stdin or one pair) and, for a dataset, its label."""
    if input in (None, "-"):
        return None, None
    from ..hf_input import resolve_input

    try:
        resolved = resolve_input(input, split=split, config=hf_config)  # type: ignore[arg-type]
    except FlipError as exc:
        fail(str(exc))
    return resolved.path, None if resolved.is_file else resolved.label


def _score_one(reward: Any, instruction: str | None, response: str | None,
               context: str | None) -> NoReturn:
    """Score one pair from the flags, print its result as JSON (exit 1 if it failed)."""
    try:
        try:  # a server that cannot give what the method needs is one error at start
            reward.identify()
        except BackendError:
            pass  # an unreachable judge: the item's error says so, as for any call
        res = reward.score([instruction], [response], [context])[0]
    except FlipError as exc:
        fail(str(exc))
    finally:
        reward.close()
    print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
    raise typer.Exit(1 if res.error else 0)


def _score_file(reward: Any, path: Path, out: Path, fields: Fields, retry_errors: bool,
                force: bool, limit: int | None, label: str | None,
                keep: list[str] | str | None = None,
                metrics_jsonl: Path | None = None) -> Summary:
    total = _count_lines(path)
    if total is not None and limit is not None:
        total = min(total, limit)
    with RunProgress("scoring", total=total, metric="mean reward", console=err,
                     metrics_jsonl=metrics_jsonl) as bar:

        def on_item(rec: dict[str, Any]) -> None:
            err_ = bool(rec.get("error"))
            bar.item(None if err_ else float(rec.get("reward") or 0.0), error=err_)

        return asyncio.run(score_file(reward, path, out, fields=fields,
                                      retry_errors=retry_errors, force=force,
                                      on_item=on_item, limit=limit, input_label=label,
                                      keep_columns=keep))


def _score_ray(input: Path, output: Path, settings: CliSettings, ray_options: RayOptions, *,
               fields: Fields, retry_errors: bool, force: bool, limit: int | None) -> NoReturn:
    """``--ray``: the same settings, handed to :func:`fliprm.scale.score_file_ray`."""
    from ..scale import score_file_ray  # Ray itself is imported only inside, when the run starts

    urls = list(settings.base_urls)
    try:
        summary = score_file_ray(
            input, output, config=settings.config, runtime=settings.runtime,
            base_urls=urls if len(urls) > 1 else None, ray_options=ray_options, fields=fields,
            # only an explicit path: each node should have its own node-local SQLite file
            cache=str(settings.cache) if settings.cache_explicit else None,
            retry_errors=retry_errors, force=force, limit=limit, progress=True,
        )
    except FlipError as exc:
        fail(str(exc))
    print_ray_summary(summary, output)
    raise typer.Exit(1 if summary.errors_total else 0)
