"""Generate N samples per prompt from ONE policy (the embedded model), for verifiable best-of-N.

The paper's test-time-scaling setting (§4.2): N samples of one policy per prompt, a reward
picks one, an objective checker scores the pick. Here the policy is the embedded 0.5B model
(temperature 0.8, seeded per sample), the prompts are IFEval's and IFBench's (their own
checkers judge the pick, see bench/bon_verified.py). Prompts are a seeded sample of each file,
so a later session extends the same list (``--prompts`` larger keeps the first ones).

All N samples of a prompt are decoded together in llama.cpp parallel slots (one batch per
step; bench/slots.py: 4 sequences at once 2.2x faster than one at a time on one core). Rows are appended as
they finish; a rerun skips every (set, key, k) already written and refuses other settings.

    taskset -c 1 python bench/bon_generate.py --set ifeval --prompts 60
    taskset -c 0 python bench/bon_generate.py --set ifbench --prompts 30
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

from sets import read_rows

#: --set -> the prompts file (bench/sets.py's FILES) whose prompts are sampled
FILES = {"ifeval": "ifeval-prompts", "ifbench": "ifbench-prompts"}
OUT_DIR = Path(__file__).resolve().parent / "results" / "bon_verified"


def select_prompts(set_name: str, n: int) -> list[dict]:
    rows = read_rows(FILES[set_name])
    order = list(range(len(rows)))
    random.Random(20261206).shuffle(order)  # fixed: the first n of a larger run are the same
    return [rows[i] for i in order[:n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(FILES), required=True)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import xllamacpp

    from fliprm.model import default_model_path, get_model_spec

    out = args.out or OUT_DIR / f"candidates-{args.set}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"temperature": args.temperature, "max_tokens": args.max_tokens,
                "model": get_model_spec(None).sha256[:16]}
    done: set[tuple[str, int]] = set()
    if out.exists():
        for line in out.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            mine = {"temperature": r["temperature"], "max_tokens": r["max_tokens"],
                    "model": r["model"]}
            if mine != settings:
                sys.exit(f"{out}: written with {mine}, this run asks {settings}; use another --out")
            done.add((str(r["key"]), r["k"]))

    p = xllamacpp.CommonParams()
    p.model.path = str(default_model_path())
    p.n_parallel = args.n
    p.n_ctx = 2048 * args.n
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.warmup = False
    p.verbosity = 0
    p.hostnames = ["127.0.0.1"]
    server = xllamacpp.Server(p)
    lock = threading.Lock()
    t_start = time.perf_counter()
    n_tok = 0
    with out.open("a") as fh:
        for pi, row in enumerate(select_prompts(args.set, args.prompts)):
            key = str(row["key"])
            todo = [k for k in range(args.n) if (key, k) not in done]
            if not todo:
                continue
            # seeds differ per prompt and per sample, and are reproducible
            seeds = {k: 1_000_003 * (pi + 1) + k for k in todo}

            def run(k: int) -> None:
                nonlocal n_tok
                body = {"messages": [{"role": "user", "content": row["prompt"]}],
                        "max_tokens": args.max_tokens, "temperature": args.temperature,
                        "seed": seeds[k]}
                reply = server.handle_chat_completions(body)
                choice = reply["choices"][0]
                rec = {"set": args.set, "key": key, "prompt": row["prompt"],
                       "instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"],
                       "k": k, "seed": seeds[k], **settings,
                       "response": choice["message"]["content"],
                       "completion_tokens": reply["usage"]["completion_tokens"],
                       "finish_reason": choice["finish_reason"]}
                with lock:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    fh.flush()
                    n_tok += rec["completion_tokens"]

            threads = [threading.Thread(target=run, args=(k,)) for k in todo]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            el = time.perf_counter() - t_start
            print(f"[{args.set}] prompt {pi + 1}/{args.prompts} key={key}: {n_tok} tokens in "
                  f"{el:.0f}s ({n_tok / el:.1f} tok/s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
