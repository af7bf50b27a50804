"""Score a file on a Ray cluster: deterministic shards, a pool of scoring actors, parquet out.

Pipeline (Ray Data, streaming)::

    pending shard descriptors --flat_map(read rows, 0 CPU)--> rows
      --map_batches(FlipBatchScorer, compute=ActorPoolStrategy(size=num_actors))--> result rows
      --driver: group by shard--> shard-00012.parquet (temp file + rename)

Rows are read by fliprm's own tolerant reader inside Ray tasks rather than by
``ray.data.read_json``/``read_parquet``: those readers carry no row index (so shards could not
be deterministic), fail the whole read on one broken JSON line, and infer an Arrow schema that
breaks on fields whose type varies between rows (``context`` null here, a string there).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._net import redact
from ..backends import is_local_model
from ..batch import Fields, Summary
from ..config import RayOptions, RewardConfig, RuntimeOptions
from ..errors import FlipError, MissingDependency, format_error_counts
from ..result import FlipResult
from ..reward import FlipReward
from ._shards import (
    IDENTITY_KEY,
    PlanLock,
    Shard,
    ShardPlan,
    plan_shards,
    read_shard,
    result_row,
    result_schema,
    shard_identity,
    shard_path,
    write_shard,
)

__all__ = ["FlipBatchScorer", "RaySummary", "ShardReport", "score_file_ray"]


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # fail here, not later inside a worker
    except ImportError:
        raise MissingDependency("the Ray path needs Ray Data: pip install 'fliprm[ray]'") from None
    return ray


class FlipBatchScorer:
    """A Ray Data callable class: builds its FlipReward once, scores one batch per call.

    Each actor owns one model (embedded, on its own CPUs) or one HTTP client (one replica, or
    a load balancer). Bad rows come back as rows with ``error`` set; if scoring the batch
    raises anyway, each row is scored on its own, so only the row that raises fails: an
    exception here would make Ray Data fail the whole job.

    >>> ds.map_batches(FlipBatchScorer, fn_constructor_kwargs={"config": RewardConfig()},
    ...                batch_format="pyarrow", compute=ActorPoolStrategy(size=2))  # doctest: +SKIP
    """

    def __init__(
        self,
        config: RewardConfig | None = None,
        runtime: RuntimeOptions | None = None,
        cache: str | None = None,
        n_threads: int | None = None,
        url_pool: Any = None,
    ) -> None:
        config = config or RewardConfig()
        runtime = runtime or RuntimeOptions()
        changes: dict[str, Any] = {}
        if url_pool is not None:  # one actor per replica: take the next URL, round robin
            import ray

            changes["base_url"] = ray.get(url_pool.next.remote())
        if is_local_model(config.backend) and n_threads and runtime.n_threads is None:
            # llama.cpp would otherwise spin one thread per core of the node, fighting the
            # other actors on it; match the CPUs Ray reserved for this actor.
            changes["n_threads"] = n_threads
        if changes:
            runtime = runtime.model_copy(update=changes)
        self.base_url = runtime.base_url
        self.reward = FlipReward(config=config, runtime=runtime, cache=cache)

    def _score(self, args: list[list[Any]], lines: list[int]) -> list[FlipResult]:
        # errors name the item by its input line, written once by the reward (as batch.py)
        try:
            return self.reward.score([a[0] for a in args], [a[1] for a in args],
                                     [a[2] for a in args], where=lambda i: f"line {lines[i]}")
        except Exception:  # noqa: BLE001 - retry the members alone: only the culprit fails
            out = []
            for a, line in zip(args, lines):
                try:
                    out.extend(self.reward.score([a[0]], [a[1]], [a[2]],
                                                 where=lambda i, line=line: f"line {line}"))
                except Exception as exc:  # noqa: BLE001
                    out.append(FlipResult(reward=None, error_kind="internal", error=redact(
                        f"line {line}: internal error: {type(exc).__name__}: {exc}")))
            return out

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        todo = [r for r in rows if r["error"] is None]
        results: dict[int, FlipResult] = {}
        args = []
        for r in todo:
            try:
                args.append(json.loads(r["args"]))
            except ValueError as exc:
                results[r["line"]] = FlipResult(reward=None, error=f"line {r['line']}: {exc}",
                                                error_kind="bad_input")
        todo = [r for r in todo if r["line"] not in results]
        for r, res in zip(todo, self._score(args, [r["line"] for r in todo])):
            results[r["line"]] = res
        out = []
        for r in rows:
            # a row read_shard refused (broken line, duplicate id, missing field) is bad input
            res = results.get(r["line"]) or FlipResult(reward=None, error=r["error"],
                                                       error_kind="bad_input")
            out.append({"shard": r["shard"], **result_row(r["id"], r["line"], res)})
        schema = result_schema().insert(0, pa.field("shard", pa.int64()))
        return pa.Table.from_pylist(out, schema=schema)

    def __del__(self) -> None:
        try:
            self.reward.close()
        except Exception:  # noqa: BLE001, S110  (best effort while the actor shuts down)
            pass


def _read_rows(desc: dict[str, Any], plan: ShardPlan, flds: Fields) -> list[dict[str, Any]]:
    return read_shard(plan, Shard(**desc), flds)


@dataclass
class ShardReport:
    """One finished shard (passed to ``on_shard`` and printed as the progress line)."""

    index: int
    rows: int
    errors: int
    mean_reward: float | None
    path: Path
    #: ``errors`` by ``error_kind`` (see :data:`fliprm.errors.ErrorKind`)
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class RaySummary(Summary):
    """The single-machine :class:`~fliprm.batch.Summary`, plus shard bookkeeping."""

    shards_total: int = 0
    shards_skipped: int = 0
    shards_written: int = 0


def _shard_state(path: Path, shard: Shard, fingerprint: str) -> str:
    """``"ok"``, ``"errors"`` (complete, with error rows) or ``"bad"``: unreadable, not the
    shard's row count, or not this shard of this plan (its recorded identity, or its lines,
    are another block's; or it records none). A truncated, copied or foreign file is redone,
    never trusted."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["line", "error"])
        recorded = json.loads((table.schema.metadata or {}).get(IDENTITY_KEY, b"null"))
    except Exception:  # noqa: BLE001 - any unreadable file is a shard to redo
        return "bad"
    want = shard_identity(fingerprint, shard)
    if table.num_rows != shard.rows or recorded != want:
        return "bad"
    lines = table.column("line").to_pylist()
    # the identity is metadata: the rows themselves must be this block's too, each once
    if len(set(lines)) != len(lines) or not all(
            isinstance(n, int) and want["first_line"] <= n <= want["last_line"] for n in lines):
        return "bad"
    col = table.column("error")
    return "errors" if col.null_count < len(col) else "ok"


def score_file_ray(
    input: str | Path,
    output_dir: str | Path,
    *,
    config: RewardConfig | None = None,
    runtime: RuntimeOptions | None = None,
    base_urls: Sequence[str] | None = None,
    ray_options: RayOptions | None = None,
    num_actors: int | None = None,
    num_cpus_per_actor: float | None = None,
    batch_size: int | None = None,
    shard_size: int | None = None,
    fields: Fields = Fields(),  # noqa: B008  (frozen dataclass, as in batch.score_file)
    cache: str | None = None,
    retry_errors: bool = False,
    force: bool = False,
    limit: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardReport], None] | None = None,
) -> RaySummary:
    """Score a JSONL/parquet file on Ray into ``output_dir/shard-NNNNN.parquet``; resumable.

    Args:
        input: JSONL or parquet file, readable at the same path on every node.
        output_dir: where shards go (written by the driver). Rerun to resume: shards already
            there are skipped, so only unfinished ones are scored.
        config: the reward (:class:`~fliprm.config.RewardConfig`); its fingerprint goes into
            ``_plan.json`` and a rerun with another is refused.
        runtime: engine options (:class:`~fliprm.config.RuntimeOptions`): ``base_url`` is one
            server or a load balancer in front of many.
        base_urls: one URL per replica; each actor takes the next one (round robin) and
            the number of actors defaults to ``len(base_urls)``.
        ray_options: how to run on Ray (:class:`~fliprm.config.RayOptions`: cluster address,
            actors, CPUs per actor, batch and shard size; the ``fliprm score --ray`` flags).
        num_actors: ``ray_options.actors``: scoring actors (default 1, or one per URL in
            ``base_urls``). This and the next four keywords, where given, override
            ``ray_options``.
        num_cpus_per_actor: ``ray_options.cpus_per_actor``: CPUs Ray reserves per actor; the
            embedded model runs that many threads. For HTTP backends a fraction (0.25) is plenty.
        batch_size: ``ray_options.batch_size``: rows per actor call; for HTTP backends also the
            most requests in flight per actor (capped by ``max_concurrency``).
        shard_size: ``ray_options.shard_size``: rows per output shard, the unit of resumption.
        fields: input column names (:class:`fliprm.batch.Fields`).
        cache: a node-local response-cache path for every actor (never one on NFS).
        retry_errors: also redo shards that hold rows with an error.
        force: start the output folder over.
        limit: only the first ``limit`` rows.
        ray_address: ``ray_options.address``: passed to ``ray.init`` if Ray is not initialised
            yet (``"auto"`` joins a running cluster; ``None`` starts a local one).
        progress: print one line per finished shard to stderr (Ray adds its own progress bars).
        on_shard: called with a :class:`ShardReport` per finished shard.

    Returns:
        a :class:`RaySummary` of this run (skipped shards are not re-read).

    Example:
        >>> s = score_file_ray("pairs.jsonl", "scores/", num_actors=2,
        ...                    config=RewardConfig(max_tokens=256))  # doctest: +SKIP
        >>> import pyarrow.parquet as pq; pq.read_table("scores/").num_rows  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    ray = _import_ray()
    config = config or RewardConfig()
    runtime = runtime or RuntimeOptions()
    opts = (ray_options or RayOptions()).replace(
        address=ray_address, actors=num_actors, cpus_per_actor=num_cpus_per_actor,
        batch_size=batch_size, shard_size=shard_size)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(input, opts.shard_size, limit=limit)
    # the identity of the reward the actors will build (the backend is built, not loaded; an
    # HTTP judge is asked what it serves, so another model under the same name is refused)
    probe_rt = runtime.model_copy(update={"base_url": base_urls[0]}) if base_urls else runtime
    probe = FlipReward(config=config, runtime=probe_rt)
    try:
        identity = {"reward": probe.identify(), "fields": asdict(fields)}
    finally:
        probe.close()
    lock = PlanLock(out)
    try:
        fingerprint = lock.check(plan, identity, force=force)
        summary = _run(ray, plan, fingerprint, out, config, runtime, base_urls, opts, fields,
                       cache, retry_errors, progress, on_shard)
    finally:
        lock.release()
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _run(ray: Any, plan: ShardPlan, fingerprint: str, out: Path, config: RewardConfig,
         runtime: RuntimeOptions, base_urls: Sequence[str] | None, opts: RayOptions,
         fields: Fields, cache: str | None, retry_errors: bool, progress: bool,
         on_shard: Callable[[ShardReport], None] | None) -> RaySummary:
    for stale in out.glob(".shard-*.tmp"):  # left by a killed run; the shard is redone
        stale.unlink(missing_ok=True)
    summary = RaySummary(shards_total=len(plan.shards))
    pending: dict[int, Shard] = {}
    for s in plan.shards:
        p = shard_path(out, s.index)
        state = _shard_state(p, s, fingerprint) if p.exists() else "missing"
        if state == "ok" or (state == "errors" and not retry_errors):
            summary.shards_skipped += 1
            if state == "errors":
                kinds = _count_errors(p)
                summary.errors_before += sum(kinds.values())
                summary.error_kinds_before.update(kinds)
        elif s.rows == 0:  # only blank lines: nothing to score
            write_shard(out, s.index, [], identity=shard_identity(fingerprint, s))
            summary.shards_written += 1
        else:
            if state == "bad" and progress:
                print(f"[fliprm] shard {s.index:05d} is unreadable, incomplete or not this "
                      "run's block: redoing it",
                      file=sys.stderr, flush=True)
            pending[s.index] = s
    if not pending:
        return summary

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=opts.address, **({} if opts.address else {"include_dashboard": False}))
    try:
        url_pool = _url_pool(ray, base_urls) if base_urls else None
        n_actors = opts.actors or (len(base_urls) if base_urls else 1)
        ds = ray.data.from_items([asdict(s) for s in pending.values()],
                                 override_num_blocks=len(pending))
        # Reading is light; 0 CPUs keeps it schedulable when the actors hold every core.
        ds = ds.flat_map(_read_rows, fn_kwargs={"plan": plan, "flds": fields}, num_cpus=0)
        ds = ds.map_batches(
            FlipBatchScorer,
            fn_constructor_kwargs={
                "config": config, "runtime": runtime, "cache": cache,
                "n_threads": max(1, round(opts.cpus_per_actor)), "url_pool": url_pool,
            },
            batch_size=opts.batch_size, batch_format="pyarrow",
            # a fixed pool: each actor holds a model or a replica, so no autoscaling churn
            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=opts.cpus_per_actor,
        )
        _collect(ds, pending, fingerprint, out, summary, progress, on_shard)
    finally:
        if started_ray:
            ray.shutdown()
    return summary


def _count_errors(path: Path) -> Counter[str]:
    """A shard's error rows by kind ("unknown": a shard written before rows had a kind)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    cols = ["error", "error_kind"] if "error_kind" in names else ["error"]
    rows = pq.read_table(path, columns=cols).to_pylist()
    return Counter(str(r.get("error_kind") or "unknown") for r in rows if r["error"] is not None)


def _collect(ds: Any, pending: dict[int, Shard], fingerprint: str, out: Path,
             summary: RaySummary, progress: bool,
             on_shard: Callable[[ShardReport], None] | None) -> None:
    """Stream results to the driver and write each shard once all its rows are in."""
    buffers: dict[int, list[dict[str, Any]]] = {k: [] for k in pending}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            k = row.pop("shard")
            buffers[k].append(row)
            if len(buffers[k]) < pending[k].rows:
                continue
            rows = buffers.pop(k)
            path = write_shard(out, k, rows, identity=shard_identity(fingerprint, pending[k]))
            report = _report(k, rows, path, summary)
            if progress:
                done = summary.shards_skipped + summary.shards_written
                mean = "n/a" if report.mean_reward is None else f"{report.mean_reward:.3f}"
                errors = format_error_counts(report.error_kinds)
                print(f"[fliprm] shard {k:05d} written: {report.rows} rows, errors {errors}, "
                      f"mean reward {mean} ({done}/{summary.shards_total} shards)",
                      file=sys.stderr, flush=True)
            if on_shard:
                on_shard(report)
    if buffers:  # rows went missing: leave those shards unwritten so a rerun redoes them
        raise FlipError(f"shards {sorted(buffers)} did not receive all their rows; rerun to redo them")


def _report(k: int, rows: list[dict[str, Any]], path: Path, summary: RaySummary) -> ShardReport:
    errs = [r for r in rows if r.get("error")]
    ok = [float(r["reward"]) for r in rows if not r.get("error") and r.get("reward") is not None]
    summary.shards_written += 1
    for r in rows:
        summary.add(r)
    kinds = Counter(str(r.get("error_kind") or "unknown") for r in errs)
    return ShardReport(k, len(rows), len(errs), sum(ok) / len(ok) if ok else None, path,
                       dict(kinds))


def _url_pool(ray: Any, urls: Sequence[str]) -> Any:
    """A tiny actor handing out replica URLs round robin, one per scoring actor."""

    @ray.remote(num_cpus=0)
    class UrlPool:
        def __init__(self, urls: list[str]) -> None:
            self.urls, self.i = urls, 0

        def next(self) -> str:
            self.i += 1
            return self.urls[(self.i - 1) % len(self.urls)]

    return UrlPool.remote(list(urls))
