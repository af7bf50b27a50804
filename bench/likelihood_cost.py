"""What the likelihood method costs on llama.cpp, path by path, on the same items in one run.

    taskset -c 1 python bench/likelihood_cost.py --focus4 10 --ifbench 10 --paths steps,one-pass

Paths (``--paths``, the first is the reference the others are compared with):

* ``grammar``: the instruction forced by a one-string grammar in one chat request (what fliprm
  did until 2026-12-04): llama.cpp decodes it token by token, sampling through the grammar, and
  greedy picks whichever split of the string the model likes (not the text's own tokenization).
* ``steps``: the instruction's canonical tokens forced one at a time with a logit bias through
  the server (``fliprm.backends._forcing``; ``likelihood_mode="forced"``, and what a remote
  llama-server gets): one decode step per token, the prompt before it from the slot's cache.
* ``one-pass``: the embedded default since 2026-12-06 (``likelihood_mode="auto"``): the
  instruction evaluated with the prompt in one forward pass through llama.cpp's library, every
  position's output kept (``fliprm.backends._libllama``).

Every path runs in this process on one model file, items interleaved (the order rotates per
item), so shared-CPU noise hits all of them. Per item: seconds, prompt tokens evaluated, forced
tokens, and the agreement of the mean log-probabilities with the first path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from _common import load_average, print_table
from sets import load_items

from fliprm import Completion, GenerateRequest, RewardConfig, truncate_middle
from fliprm.backends.embedded import EmbeddedBackend
from fliprm.methods import INSTRUCTION_KEY, Item, forced_logprobs, render
from fliprm.neutralize import neutralize


def request(instruction: str, response: str, max_chars: int) -> tuple[GenerateRequest, str]:
    fam = RewardConfig().family()
    resp = neutralize(truncate_middle(response, max_chars)[0])[0]
    forced = json.dumps(instruction, ensure_ascii=False)[1:-1]
    req = GenerateRequest(messages=render(Item(instruction, resp, None, fam.main, "bench")),
                          max_tokens=8, temperature=0.0,
                          assistant_prefix='{"' + INSTRUCTION_KEY + '": "', forced_text=forced,
                          forced_suffix='"}')
    return req, forced


def grammar(backend: EmbeddedBackend, req: GenerateRequest, forced: str) -> dict:
    """The old grammar-forced request, as fliprm built it."""
    messages = [dict(m) for m in req.messages]
    messages.append({"role": "assistant", "content": req.assistant_prefix})
    text = forced + req.forced_suffix
    body = {"messages": messages, "max_tokens": 4 * len(text) + 8, "temperature": 0.0,
            "grammar": "root ::= " + json.dumps(text, ensure_ascii=False), "logprobs": True, "top_logprobs": 1,
            "n_probs": 1}
    t0 = time.perf_counter()
    reply, _ = backend._call(body)
    secs = time.perf_counter() - t0
    if not isinstance(reply, dict) or "choices" not in reply:
        raise SystemExit(f"llama.cpp refused the grammar-forced request: {str(reply)[:300]}")
    # only the forced tokens' log-probabilities are read from the reply
    content = reply["choices"][0]["logprobs"]["content"]
    comp = Completion(text="", token_logprobs=[(t["token"], float(t["logprob"])) for t in content])
    used = forced_logprobs(comp, forced)
    timings = reply.get("timings", {})
    return {"s": secs, "mean_lp": sum(used) / len(used), "forced": len(used),
            "prefill": timings.get("prompt_n", 0), "prefill_ms": timings.get("prompt_ms", 0.0),
            "decode_ms": timings.get("predicted_ms", 0.0)}


def generate(backend: EmbeddedBackend, req: GenerateRequest, forced: str) -> dict:
    t0 = time.perf_counter()
    comp = asyncio.run(backend.generate(req))
    secs = time.perf_counter() - t0
    used = forced_logprobs(comp, forced)
    return {"s": secs, "mean_lp": sum(used) / len(used), "forced": len(used),
            "prefill": comp.prompt_tokens - (comp.cached_prompt_tokens or 0)}


def flush(backend: EmbeddedBackend) -> None:
    """Replace llama.cpp's cached prompt with an unrelated one."""
    backend._call({"messages": [{"role": "user", "content": "Count to three."}],
                   "max_tokens": 1, "temperature": 0.0})


def items(focus4: int, ifbench: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """The first ``focus4`` best-of-4 items and ``ifbench`` IFBench pairs (response i against
    prompts i and i+1)."""
    kinds = (("best-of-4", load_items("focus4", focus4) if focus4 else []),
             # one row more: the last pair's mismatched prompt is the next row's, not a wrap
             ("IFBench pair", load_items("ifbench", ifbench + 1)[:ifbench] if ifbench else []))
    return [(kind, list(zip(it["prompts"], it["responses"]))) for kind, its in kinds for it in its]


#: path -> (which backend: its likelihood_mode, the function that scores one request)
PATHS = {"grammar": ("forced", grammar), "steps": ("forced", generate),
         "one-pass": ("auto", generate)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--focus4", type=int, default=10)
    ap.add_argument("--ifbench", type=int, default=10)
    ap.add_argument("--paths", default="steps,one-pass",
                    help=f"comma list of {', '.join(PATHS)}; the first is the reference")
    ap.add_argument("--max-response-chars", type=int, default=2400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        ap.error(f"--paths: choose from {', '.join(PATHS)}")
    # No host-RAM prompt cache: it would hand whichever path runs second the other's prefill.
    # The slot's own prefix reuse stays on (what scoring one response against several
    # instructions really gets); a flush before each path's turn empties the slot. One backend
    # per likelihood_mode (the weights are memory-mapped once).
    backends = {mode: EmbeddedBackend(n_threads=args.threads, prompt_cache_mib=0,
                                      likelihood_mode=mode, n_parallel=1)
                for mode in {PATHS[p][0] for p in paths}}
    for b in backends.values():
        b.start()
    print(f"load {load_average()}", file=sys.stderr)
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    diffs: dict[str, list[float]] = {p: [] for p in paths[1:]}
    for n_item, (kind, pairs) in enumerate(items(args.focus4, args.ifbench)):
        reqs = [request(x, y, args.max_response_chars) for x, y in pairs]
        # Each path scores the item's pairs back to back (so each reuses a shared response's
        # prefix within the item), after a flush (so none inherits another's prompt cache);
        # the order rotates between items.
        order = paths[n_item % len(paths):] + paths[:n_item % len(paths)]
        runs: dict[str, list[dict]] = {}
        for path in order:
            mode, fn = PATHS[path]
            flush(backends[mode])
            runs[path] = [fn(backends[mode], req, forced) for req, forced in reqs]
        stats = per.setdefault(kind, {p: {"s": [], "prefill": [], "forced": []} for p in paths})
        for path in paths:
            for key in ("s", "prefill", "forced"):
                stats[path][key].append(sum(r[key] for r in runs[path]))
        for path in paths[1:]:
            diffs[path] += [a["mean_lp"] - b["mean_lp"] for a, b in zip(runs[path],
                                                                         runs[paths[0]])]
        print(f"{kind}: " + "  ".join(f"{p} {stats[p]['s'][-1]:.1f}s" for p in paths),
              file=sys.stderr, flush=True)
    rows = []
    for kind, st in per.items():
        ref = statistics.fmean(st[paths[0]]["s"])
        for path in paths:
            sec = statistics.fmean(st[path]["s"])
            rows.append([kind, len(st[path]["s"]), path, f"{sec:.2f}", f"{ref / sec:.2f}x",
                         f"{statistics.fmean(st[path]['prefill']):.0f}",
                         f"{statistics.fmean(st[path]['forced']):.1f}"])
    print_table("likelihood cost per item (same items, interleaved; one llama.cpp thread)",
                ["item", "n", "path", "s/item", f"speed-up vs {paths[0]}",
                 "prompt tokens evaluated", "forced tokens"], rows)
    for path, ds in diffs.items():
        absd = sorted(abs(d) for d in ds)
        if absd:
            print(f"mean log-prob, {path} - {paths[0]}, per scored pair: median |diff| "
                  f"{absd[len(absd) // 2]:.3f}, max {absd[-1]:.3f} (n={len(absd)})")
    print(f"load {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"paths": paths, "per": per, "diffs": diffs},
                                        indent=2))
    for b in backends.values():
        b.close()


if __name__ == "__main__":
    main()
