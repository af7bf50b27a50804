"""``fliprm score``: one pair from flags, or a whole file into resumable JSONL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..batch import Fields, Summary, score_file
from ..errors import FlipError
from ._options import (
    ApiKeyOpt,
    BackendOpt,
    CacheOpt,
    ConcurrencyOpt,
    ConstrainedOpt,
    ExactOpt,
    MaskEchoOpt,
    MaxTokensOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    ParseOpt,
    SeedOpt,
    SystemTemplateOpt,
    TemplateOpt,
    TempOpt,
    TruncOpt,
    UserTemplateOpt,
    backend_options,
    make_reward,
    reward_options,
)

if TYPE_CHECKING:
    from ..scale import RaySummary

err = Console(stderr=True)


def _count_lines(path: Path) -> int | None:
    if path.suffix.lower() in (".parquet", ".pq"):
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) - (1 if path.suffix.lower() == ".csv" else 0)


def _print_summary_table(title: str, rows: list[tuple[str, Any]], first_errors: list[str]) -> None:
    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, str(v))
    err.print(t)
    for e in first_errors:
        err.print(f"[red]error:[/red] {escape(str(e))}")


def print_summary(s: Summary, output: Path) -> None:
    mean = s.mean_reward
    rows = [
        ("items in input", s.total),
        ("scored now", s.scored),
        ("skipped (already in output)", s.skipped),
        ("mean reward", "n/a" if mean is None else f"{mean:.4f}"),
        ("parse failures", s.parse_failures),
        ("errors", s.errors),
        ("cache hits", s.cache_hits),
        ("prompt / output tokens", f"{s.prompt_tokens} / {s.completion_tokens}"),
        ("items/s", f"{s.items_per_s:.3f}"),
        ("elapsed", f"{s.elapsed_s:.1f} s"),
    ]
    _print_summary_table(f"fliprm score -> {escape(str(output))}", rows, s.first_errors)


def print_ray_summary(s: RaySummary, output: Path) -> None:
    mean = s.mean_reward
    rows = [
        ("shards", s.shards_total),
        ("shards written now", s.shards_written),
        ("shards skipped (already there)", s.shards_skipped),
        ("rows scored now", s.scored),
        ("mean reward", "n/a" if mean is None else f"{mean:.4f}"),
        ("parse failures", s.parse_failures),
        ("errors", s.errors),
        ("items/s (incl. Ray start)", f"{s.items_per_s:.3f}"),
        ("elapsed", f"{s.elapsed_s:.1f} s"),
    ]
    _print_summary_table(f"fliprm score --ray -> {escape(str(output))}", rows, s.first_errors)


def register(app: typer.Typer) -> None:
    @app.command()
    def score(
        input: Annotated[
            Path | None, typer.Argument(help="JSONL, CSV or parquet file (--ray: JSONL or parquet)")
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "-o", "--output", help="results JSONL (--ray: a folder of parquet shards)"
            ),
        ] = None,
        instruction: Annotated[str | None, typer.Option("--instruction", "-i")] = None,
        response: Annotated[str | None, typer.Option("--response", "-r")] = None,
        context: Annotated[str | None, typer.Option("--context")] = None,
        id_field: Annotated[str, typer.Option("--id-field")] = "id",
        instruction_field: Annotated[str, typer.Option("--instruction-field")] = "instruction",
        response_field: Annotated[str, typer.Option("--response-field")] = "response",
        context_field: Annotated[str, typer.Option("--context-field")] = "context",
        messages_field: Annotated[str, typer.Option("--messages-field")] = "messages",
        infer: Annotated[
            str, typer.Option("--infer", help="user | system (chat-message inputs)")
        ] = "user",
        retry_errors: Annotated[
            bool, typer.Option("--retry-errors", help="redo items that failed before")
        ] = False,
        limit: Annotated[
            int | None, typer.Option("--limit", help="first N input lines only")
        ] = None,
        ray: Annotated[
            bool,
            typer.Option(
                "--ray",
                help="score on Ray (needs the ray extra): -o is a folder of parquet "
                "shards, resumable by shard",
            ),
        ] = False,
        ray_address: Annotated[
            str | None,
            typer.Option(
                "--ray-address",
                help="with --ray: 'auto' joins a running cluster, or ray://HOST:10001 "
                "(default: start a local Ray)",
            ),
        ] = None,
        actors: Annotated[
            int | None,
            typer.Option(
                "--actors", help="with --ray: scoring actors (default 1, or one per --base-url)"
            ),
        ] = None,
        cpus_per_actor: Annotated[
            float | None,
            typer.Option(
                "--cpus-per-actor",
                help="with --ray: CPUs reserved per actor; the embedded model "
                "runs that many threads (default 1; 0.25 is plenty for HTTP)",
            ),
        ] = None,
        batch_size: Annotated[
            int | None,
            typer.Option("--batch-size", help="with --ray: rows per actor call (default 16)"),
        ] = None,
        shard_size: Annotated[
            int | None,
            typer.Option(
                "--shard-size",
                help="with --ray: rows per output shard, the unit of resumption (default 1000)",
            ),
        ] = None,
        backend: BackendOpt = "embedded",
        base_url: Annotated[
            list[str] | None,
            typer.Option(
                "--base-url",
                help="OpenAI-compatible URL, e.g. http://127.0.0.1:8000/v1; with --ray "
                "repeat it for one actor per replica",
            ),
        ] = None,
        model: ModelOpt = None,
        api_key: ApiKeyOpt = None,
        concurrency: ConcurrencyOpt = None,
        template: TemplateOpt = None,
        system_template: SystemTemplateOpt = None,
        user_template: UserTemplateOpt = None,
        method: MethodOpt = "f1",
        parse_failure: ParseOpt = "raw",
        max_tokens: MaxTokensOpt = 512,
        temperature: TempOpt = 0.0,
        seed: SeedOpt = None,
        max_response_chars: TruncOpt = None,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        constrained: ConstrainedOpt = True,
        exact: ExactOpt = False,
        mask_echo: MaskEchoOpt = False,
    ) -> None:
        """Score (instruction, response) pairs with FLIP.

        One pair: fliprm score -i "Name the capital of France." -r "Paris."
        A file:   fliprm score pairs.jsonl -o scores.jsonl   (re-run to resume)
        On Ray:   fliprm score pairs.jsonl -o scores/ --ray --actors 2   (parquet shards)
        """
        single = instruction is not None or response is not None
        if single == (input is not None):
            raise typer.BadParameter("give either INPUT (with -o) or --instruction and --response")
        if input is not None and output is None:
            raise typer.BadParameter("scoring a file needs -o OUTPUT.jsonl (with --ray: -o DIR)")
        urls = list(base_url or [])
        ray_only = {
            "--ray-address": ray_address,
            "--actors": actors,
            "--cpus-per-actor": cpus_per_actor,
            "--batch-size": batch_size,
            "--shard-size": shard_size,
        }
        if not ray:
            given = [flag for flag, value in ray_only.items() if value is not None]
            if given:
                raise typer.BadParameter(f"{', '.join(given)} only apply with --ray")
            if len(urls) > 1:
                raise typer.BadParameter("several --base-url (one per replica) need --ray")
        elif single:
            raise typer.BadParameter("--ray scores a file: give INPUT and -o DIR")
        # the FlipReward settings, shared by the Ray and the single-machine paths
        options: dict[str, Any] = {
            "template": template,
            "system_template": system_template,
            "user_template": user_template,
            "method": method,
            "parse_failure": parse_failure,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
            "max_response_chars": max_response_chars,
            "constrained": constrained,
            "infer": infer,
            "mask_echo": mask_echo,
        }
        if ray:
            assert input is not None and output is not None
            _score_ray(
                input,
                output,
                urls=urls,
                ray_address=ray_address,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                batch_size=batch_size,
                shard_size=shard_size,
                fields=Fields(
                    id_field, instruction_field, response_field, context_field, messages_field
                ),
                backend=backend,
                model=model,
                api_key=api_key,
                concurrency=concurrency,
                exact=exact,
                reward_kwargs={"concurrency": concurrency, **options},
                cache=None if no_cache else cache,
                retry_errors=retry_errors,
                limit=limit,
            )
        try:
            reward = make_reward(
                backend=backend,
                base_url=urls[0] if urls else None,
                model=model,
                api_key=api_key,
                concurrency=concurrency,
                cache=cache,
                no_cache=no_cache,
                exact=exact,
                **options,
            )
        except FlipError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        try:
            if single:
                res = reward.score([instruction], [response], [context])[0]
                print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
                raise typer.Exit(1 if res.error else 0)
            assert input is not None and output is not None
            fields = Fields(
                id_field, instruction_field, response_field, context_field, messages_field
            )
            total = _count_lines(input) if input.is_file() else None
            if total is not None and limit is not None:
                total = min(total, limit)
            with Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=err,
                transient=False,
            ) as progress:
                task = progress.add_task("score", total=total, status="")
                done = [0, 0.0]

                def on_item(rec: dict) -> None:
                    if not rec.get("error"):
                        done[0] += 1
                        done[1] += float(rec.get("reward") or 0.0)
                    progress.update(task, advance=1, status=f"mean {done[1] / max(done[0], 1):.3f}")

                summary = asyncio.run(
                    score_file(
                        reward,
                        input,
                        output,
                        fields=fields,
                        retry_errors=retry_errors,
                        on_item=on_item,
                        limit=limit,
                    )
                )
                progress.update(task, completed=summary.total)
        except FlipError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        finally:
            reward.close()
        print_summary(summary, output)
        raise typer.Exit(1 if summary.errors else 0)


def _score_ray(
    input: Path,
    output: Path,
    *,
    urls: list[str],
    ray_address: str | None,
    actors: int | None,
    cpus_per_actor: float | None,
    batch_size: int | None,
    shard_size: int | None,
    fields: Fields,
    backend: str,
    model: str | None,
    api_key: str | None,
    concurrency: int | None,
    exact: bool,
    reward_kwargs: dict[str, Any],
    cache: Path | None,
    retry_errors: bool,
    limit: int | None,
) -> NoReturn:
    """``--ray``: the same flags, turned into :func:`fliprm.scale.score_file_ray` arguments."""
    from ..scale import score_file_ray  # Ray itself is imported only inside, when the run starts

    if any(v is not None and v <= 0 for v in (actors, cpus_per_actor, batch_size, shard_size)):
        raise typer.BadParameter(
            "--actors, --cpus-per-actor, --batch-size and --shard-size must be positive"
        )
    # One URL: every actor talks to it (a single server or a load balancer). Several: each
    # actor takes the next one, so the actor count follows the replica count by default.
    opts = backend_options(
        backend, urls[0] if len(urls) == 1 else None, model, api_key, concurrency, exact
    )
    if len(urls) > 1:
        opts.pop("base_url", None)
    try:
        rw = reward_options(**reward_kwargs)
        if cache is not None:
            # Only an explicit path: the default cache folder is the driver's, and each node
            # should have its own node-local SQLite file (never a shared NFS one).
            rw["cache"] = str(cache)
        summary = score_file_ray(
            input,
            output,
            backend=backend,
            backend_options=opts,
            base_urls=urls if len(urls) > 1 else None,
            num_actors=actors,
            num_cpus_per_actor=cpus_per_actor if cpus_per_actor is not None else 1.0,
            batch_size=batch_size or 16,
            shard_size=shard_size or 1000,
            fields=fields,
            reward_options=rw,
            retry_errors=retry_errors,
            limit=limit,
            ray_address=ray_address,
            progress=True,
        )
    except FlipError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    print_ray_summary(summary, output)
    raise typer.Exit(1 if summary.errors else 0)
