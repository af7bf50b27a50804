"""Ray path vs single-machine path on IFBench pairs: same rewards? items/s with 1 and 2 actors.

Usage (CPU is shared: start small, run long jobs in the background)::

    python bench/ray_scale.py --n 20                    # smoke run, a few minutes
    nohup python bench/ray_scale.py --n 200 > /work/runs/ray/bench200.log 2>&1 &
    # bit-exact comparison; the single-machine part first, while the other core is busy:
    python bench/ray_scale.py --n 200 --exact --skip-single --single-threads 1 --actors "" \
        --max-response-chars 600 --out single.json
    python bench/ray_scale.py --n 200 --exact --skip-single --actors 2 \
        --max-response-chars 600 --reference single.json

Runs, in order, with identical reward settings and greedy decoding (model load is outside the
single-machine timing but inside the Ray wall time: ray.init + actor start + load, ~10-20 s):
  1. single machine: ``FlipReward("embedded").score(...)`` in this process (all cores);
  2. Ray, 1 actor holding all cores (``num_cpus_per_actor = cores``);
  3. Ray, 2 actors each holding half the cores (llama.cpp threads = CPUs per actor).
On a 2-core machine expect no gain from 2 actors: one llama.cpp process already keeps both
cores busy (decoding is compute-bound), so two actors just split the same CPU.

Prints one JSON line per run and a final comparison; ``--out`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sets import data_path, read_jsonl


def load_pairs(path: Path, n: int) -> list[dict]:
    """The first ``n`` rows of a prompt/response JSONL as ``{id, instruction, response}``."""
    return [{"id": f"ifb-{i}", "instruction": r["prompt"], "response": r["response"]}
            for i, r in enumerate(read_jsonl(path)[:n])]


def loadavg() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def run_single(pairs: list[dict], settings: dict, backend_options: dict,
               n_threads: int | None = None) -> tuple[dict, list]:
    from fliprm import FlipReward
    from fliprm.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(n_threads=n_threads, **backend_options)
    backend.start()  # load outside the timed part, as a long-running single-machine job would
    rm = FlipReward(backend, **settings)
    t0 = time.perf_counter()
    res = rm.score([p["instruction"] for p in pairs], [p["response"] for p in pairs])
    dt = time.perf_counter() - t0
    rm.close()
    return {"run": f"single-{backend.n_threads}-threads", "n": len(pairs), "wall_s": round(dt, 1),
            "items_per_s": round(len(pairs) / dt, 4),
            "errors": sum(1 for r in res if r.error)}, [r.reward for r in res]


def run_ray(inp: Path, out: Path, pairs: list[dict], settings: dict, backend_options: dict,
            actors: int, cpus: int, shard_size: int, batch_size: int) -> tuple[dict, list]:
    import pyarrow.parquet as pq

    from fliprm.scale import score_file_ray

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    from fliprm import RewardConfig

    config = RewardConfig(**settings, exact=bool(backend_options.get("reuse_prompt_cache") is False))
    s = score_file_ray(inp, out, config=config, num_actors=actors, num_cpus_per_actor=cpus / actors,
                       batch_size=batch_size, shard_size=shard_size)
    dt = time.perf_counter() - t0
    rows = sorted((r for f in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()),
                  key=lambda r: r["line"])
    return {"run": f"ray-{actors}-actor", "n": len(pairs), "wall_s": round(dt, 1),
            "items_per_s": round(len(pairs) / dt, 4), "errors": s.errors, "cpus_per_actor": cpus / actors}, [r["reward"] for r in rows]


def compare(a: list, b: list) -> dict:
    same = sum(1 for x, y in zip(a, b) if x == y)
    diffs = [abs(x - y) for x, y in zip(a, b) if x is not None and y is not None]
    return {"identical": same, "of": len(a), "max_abs_diff": round(max(diffs, default=0.0), 4)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--data", type=Path, default=None,
                    help="prompt/response JSONL (default: the ifbench set, bench/sets.py)")
    ap.add_argument("--workdir", type=Path, default=Path("/work/runs/ray/bench"))
    ap.add_argument("--template", default="flip-short")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-response-chars", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--single-threads", default="",
                    help="also run the single path with these llama.cpp thread counts, e.g. 1")
    ap.add_argument("--exact", action="store_true",
                    help="reprocess every prompt from scratch (EmbeddedBackend(reuse_prompt_cache="
                    "False)), so rewards cannot depend on which item a worker scored before")
    ap.add_argument("--reference", type=Path,
                    help="an earlier --out report (same --n and settings): compare with its rewards "
                    "too, e.g. a single-machine run made while the other core was busy")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    cpus = len(os.sched_getaffinity(0))
    settings = {"template": args.template, "max_tokens": args.max_tokens,
                "max_response_chars": args.max_response_chars}
    pairs = load_pairs(args.data or data_path("ifbench"), args.n)
    args.workdir.mkdir(parents=True, exist_ok=True)
    inp = args.workdir / f"pairs-{args.n}.jsonl"
    inp.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    backend_options = {"reuse_prompt_cache": False} if args.exact else {}
    report: dict = {"settings": settings, "backend_options": backend_options, "cpus": cpus, "n": args.n, "load_start": loadavg(), "runs": []}
    print(json.dumps({"load_start": report["load_start"]}), flush=True)

    rewards: dict[str, list] = {}
    if args.reference:
        ref = json.loads(args.reference.read_text(encoding="utf-8"))
        if (ref["settings"], ref.get("backend_options", {}), ref["n"]) != (settings, backend_options, args.n):
            sys.exit(f"{args.reference}: made with other settings, --exact or --n")
        rewards.update(ref["rewards"])
        report["runs"].extend(ref["runs"])
    if not args.skip_single:
        r, rewards["single"] = run_single(pairs, settings, backend_options)
        report["runs"].append(r)
        print(json.dumps(r), flush=True)
    for t in [int(x) for x in args.single_threads.split(",") if x]:
        r, rewards[f"single{t}"] = run_single(pairs, settings, backend_options, n_threads=t)
        report["runs"].append(r)
        print(json.dumps(r), flush=True)

    actor_counts = [int(a) for a in args.actors.split(",") if a]
    if actor_counts:
        import ray

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    for k in actor_counts:
        r, rewards[f"ray{k}"] = run_ray(inp, args.workdir / f"out-{args.n}-{k}", pairs, settings,
                                        backend_options, k, cpus, args.shard_size, args.batch_size)
        report["runs"].append(r)
        print(json.dumps(r), flush=True)
    if actor_counts:
        ray.shutdown()

    # Same rewards? Against the default single path, and the 1-thread single path if run
    # (llama.cpp's float sums depend on the thread count, so greedy outputs can flip on ties).
    for ref in ("single", "single1"):
        if ref in rewards:
            report[f"same_rewards_vs_{ref}"] = {
                name: compare(rewards[ref], rw) for name, rw in rewards.items() if name != ref
            }
    report["load_end"] = loadavg()
    print(json.dumps(report, indent=2), flush=True)
    report["rewards"] = rewards
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
