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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..backends import is_local_model
from ..batch import Fields, Summary
from ..errors import FlipError, MissingDependency
from ..reward import FlipResult, FlipReward
from ._shards import (
    Shard,
    ShardPlan,
    check_plan,
    plan_shards,
    read_shard,
    result_row,
    result_schema,
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
    a load balancer). Bad rows and even a failing batch come back as rows with ``error`` set:
    an exception here would make Ray Data fail the whole job.

    >>> ds.map_batches(FlipBatchScorer, fn_constructor_kwargs={"backend": "embedded"},
    ...                batch_format="pyarrow", compute=ActorPoolStrategy(size=2))  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: str = "embedded",
        backend_options: Mapping[str, Any] | None = None,
        reward_options: Mapping[str, Any] | None = None,
        n_threads: int | None = None,
        url_pool: Any = None,
    ) -> None:
        opts = dict(backend_options or {})
        if url_pool is not None:  # one actor per replica: take the next URL, round robin
            import ray

            opts["base_url"] = ray.get(url_pool.next.remote())
        if is_local_model(backend) and n_threads and "n_threads" not in opts:
            # llama.cpp would otherwise spin one thread per core of the node, fighting the
            # other actors on it; match the CPUs Ray reserved for this actor.
            opts["n_threads"] = n_threads
        self.base_url = opts.get("base_url")
        self.reward = FlipReward(backend, backend_options=opts, **dict(reward_options or {}))

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        todo = [r for r in rows if r["error"] is None]
        results: dict[int, FlipResult] = {}
        try:
            args = [json.loads(r["args"]) for r in todo]
            scored = self.reward.score([a[0] for a in args], [a[1] for a in args],
                                       [a[2] for a in args])
            for r, res in zip(todo, scored):
                if res.error and res.error.startswith("item "):  # name the line, as batch.py does
                    res.error = f"line {r['line']}" + res.error[res.error.index(":"):]
                results[r["line"]] = res
        except Exception as exc:  # noqa: BLE001  (never let one batch kill a million-row job)
            for r in todo:
                results[r["line"]] = FlipResult(reward=None, error=f"batch failed: {type(exc).__name__}: {exc}")
        out = []
        for r in rows:
            res = results.get(r["line"]) or FlipResult(reward=None, error=r["error"])
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


@dataclass
class RaySummary(Summary):
    """The single-machine :class:`~fliprm.batch.Summary`, plus shard bookkeeping."""

    shards_total: int = 0
    shards_skipped: int = 0
    shards_written: int = 0


def _has_errors(path: Path) -> bool:
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["error"]).column("error")
    return col.null_count < len(col)


def _settings(backend: str, backend_options: Mapping[str, Any], reward_options: Mapping[str, Any],
              flds: Fields) -> dict[str, Any]:
    # What changes the rewards; not URLs, keys or concurrency, so a resume may use new servers.
    s = {"backend": backend, "model": backend_options.get("model"), "fields": asdict(flds),
         "reward": {k: v for k, v in reward_options.items()
                    if k not in ("max_concurrency", "max_retries", "total_timeout", "cache")}}
    if backend_options.get("reuse_prompt_cache") is False:  # --exact: other bits than a plain run
        s["exact"] = True
    return json.loads(json.dumps(s, default=str, sort_keys=True))


def score_file_ray(
    input: str | Path,
    output_dir: str | Path,
    *,
    backend: str = "embedded",
    backend_options: Mapping[str, Any] | None = None,
    base_urls: Sequence[str] | None = None,
    num_actors: int | None = None,
    num_cpus_per_actor: float = 1.0,
    batch_size: int = 16,
    shard_size: int = 1000,
    fields: Fields = Fields(),  # noqa: B008  (frozen dataclass, as in batch.score_file)
    reward_options: Mapping[str, Any] | None = None,
    retry_errors: bool = False,
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
        backend: ``"embedded"``, ``"gguf:PATH"`` or ``"openai[:MODEL]"``, as :func:`get_backend`.
        backend_options: keyword arguments for the backend (``base_url``, ``model``, ``api_key``,
            ``max_concurrency``...); ``base_url`` is one server or a load balancer in front of many.
        base_urls: one URL per replica; each actor takes the next one (round robin) and
            ``num_actors`` defaults to ``len(base_urls)``.
        num_actors: scoring actors (default 1, or one per URL in ``base_urls``).
        num_cpus_per_actor: CPUs Ray reserves per actor; the embedded model runs that many
            threads. For HTTP backends a fraction (0.25) is plenty.
        batch_size: rows per actor call; for HTTP backends also the most requests in flight per
            actor (capped by ``max_concurrency``).
        shard_size: rows per output shard, the unit of resumption.
        fields: input column names (:class:`fliprm.batch.Fields`).
        reward_options: keyword arguments for :class:`FlipReward` (``template``, ``method``,
            ``max_tokens``, ``parse_failure``, ``cache`` (a node-local path) ...).
        retry_errors: also redo shards that hold rows with an error.
        limit: only the first ``limit`` rows.
        ray_address: passed to ``ray.init`` if Ray is not initialised yet (``"auto"`` joins a
            running cluster; ``None`` starts a local one).
        progress: print one line per finished shard to stderr (Ray adds its own progress bars).
        on_shard: called with a :class:`ShardReport` per finished shard.

    Returns:
        a :class:`RaySummary` of this run (skipped shards are not re-read).

    Example:
        >>> s = score_file_ray("pairs.jsonl", "scores/", num_actors=2,
        ...                    reward_options={"max_tokens": 256})  # doctest: +SKIP
        >>> import pyarrow.parquet as pq; pq.read_table("scores/").num_rows  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    ray = _import_ray()
    backend_options = dict(backend_options or {})
    reward_options = dict(reward_options or {})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(input, shard_size, limit=limit)
    check_plan(out, plan, _settings(backend, backend_options, reward_options, fields))
    for stale in out.glob(".shard-*.tmp"):  # left by a killed run; the shard is redone
        stale.unlink(missing_ok=True)

    summary = RaySummary(shards_total=len(plan.shards))
    pending: dict[int, Shard] = {}
    for s in plan.shards:
        p = shard_path(out, s.index)
        if p.exists() and not (retry_errors and _has_errors(p)):
            summary.shards_skipped += 1
        elif s.rows == 0:  # only blank lines: nothing to score
            write_shard(out, s.index, [])
            summary.shards_written += 1
        else:
            pending[s.index] = s
    if not pending:
        summary.elapsed_s = time.perf_counter() - t0
        return summary

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=ray_address, **({} if ray_address else {"include_dashboard": False}))
    try:
        url_pool = _url_pool(ray, base_urls) if base_urls else None
        n_actors = num_actors or (len(base_urls) if base_urls else 1)
        ds = ray.data.from_items([asdict(s) for s in pending.values()],
                                 override_num_blocks=len(pending))
        # Reading is light; 0 CPUs keeps it schedulable when the actors hold every core.
        ds = ds.flat_map(_read_rows, fn_kwargs={"plan": plan, "flds": fields}, num_cpus=0)
        ds = ds.map_batches(
            FlipBatchScorer,
            fn_constructor_kwargs={
                "backend": backend, "backend_options": backend_options,
                "reward_options": reward_options,
                "n_threads": max(1, round(num_cpus_per_actor)), "url_pool": url_pool,
            },
            batch_size=batch_size, batch_format="pyarrow",
            # a fixed pool: each actor holds a model or a replica, so no autoscaling churn
            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=num_cpus_per_actor,
        )
        _collect(ds, pending, out, summary, progress, on_shard)
    finally:
        if started_ray:
            ray.shutdown()
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _collect(ds: Any, pending: dict[int, Shard], out: Path, summary: RaySummary,
             progress: bool, on_shard: Callable[[ShardReport], None] | None) -> None:
    """Stream results to the driver and write each shard once all its rows are in."""
    buffers: dict[int, list[dict[str, Any]]] = {k: [] for k in pending}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            k = row.pop("shard")
            buffers[k].append(row)
            if len(buffers[k]) < pending[k].rows:
                continue
            rows = buffers.pop(k)
            path = write_shard(out, k, rows)
            report = _report(k, rows, path, summary)
            if progress:
                done = summary.shards_skipped + summary.shards_written
                mean = "n/a" if report.mean_reward is None else f"{report.mean_reward:.3f}"
                print(f"[fliprm] shard {k:05d} written: {report.rows} rows, {report.errors} errors, "
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
    return ShardReport(k, len(rows), len(errs), sum(ok) / len(ok) if ok else None, path)


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
