"""What the likelihood method costs on llama.cpp, before and after, on the same items in one run.

    taskset -c 1 python bench/likelihood_cost.py --focus4 10 --ifbench 10

*before*: the instruction forced by a one-string grammar in one chat request (the path fliprm
used until 2026-12-04): llama.cpp decodes it token by token, sampling through the grammar, and
greedy picks whichever split of the string the model likes (not the text's own tokenization).
*after*: the instruction's canonical tokens forced one at a time with a logit bias
(``fliprm.backends._forcing``): each step evaluates one token, the prompt before it comes from
llama.cpp's prompt cache, so a response scored against several instructions pays for its prefill
once. Both paths run interleaved, item by item, on one model, so shared-CPU noise hits both.

Per item: seconds, prompt tokens evaluated (prefill), forced tokens, and the agreement of the two
mean log-probabilities. Where the time goes is read from llama.cpp's own timings (before) and
from the step count (after): prefill of the response vs one evaluation per forced token.
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


def before(backend: EmbeddedBackend, req: GenerateRequest, forced: str) -> dict:
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


def after(backend: EmbeddedBackend, req: GenerateRequest, forced: str) -> dict:
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--focus4", type=int, default=10)
    ap.add_argument("--ifbench", type=int, default=10)
    ap.add_argument("--max-response-chars", type=int, default=2400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    # No host-RAM prompt cache: it would hand whichever path runs second the other's prefill.
    # The slot's own prefix reuse stays on (what scoring one response against several
    # instructions really gets); a flush before each path's turn empties the slot.
    backend = EmbeddedBackend(n_threads=args.threads, prompt_cache_mib=0)
    backend.start()
    print(f"load {load_average()}", file=sys.stderr)
    per: dict[str, dict[str, list[float]]] = {}
    diffs: list[float] = []
    for kind, pairs in items(args.focus4, args.ifbench):
        stats = per.setdefault(kind, {k: [] for k in ("b_s", "a_s", "b_pre", "a_pre", "b_tok",
                                                        "a_tok", "b_pms", "b_dms")})
        sums = {k: 0.0 for k in stats}
        reqs = [request(x, y, args.max_response_chars) for x, y in pairs]
        # Each path scores the item's pairs back to back (so both reuse a shared response's
        # prefix within the item), after a flush (so neither inherits the other's prompt
        # cache); which path goes first alternates between items.
        runs: dict[str, list[dict]] = {}
        order = ("before", "after") if len(diffs) % 2 == 0 else ("after", "before")
        for path in order:
            flush(backend)
            fn = before if path == "before" else after
            runs[path] = [fn(backend, req, forced) for req, forced in reqs]
        for b, a in zip(runs["before"], runs["after"]):
            sums["b_s"] += b["s"]
            sums["a_s"] += a["s"]
            sums["b_pre"] += b["prefill"]
            sums["a_pre"] += a["prefill"]
            sums["b_tok"] += b["forced"]
            sums["a_tok"] += a["forced"]
            sums["b_pms"] += b["prefill_ms"]
            sums["b_dms"] += b["decode_ms"]
            diffs.append(a["mean_lp"] - b["mean_lp"])
        for k, v in sums.items():
            stats[k].append(v)
        print(f"{kind}: before {sums['b_s']:.1f}s after {sums['a_s']:.1f}s", file=sys.stderr,
              flush=True)
    rows = []
    for kind, st in per.items():
        n = len(st["b_s"])
        b, a = statistics.fmean(st["b_s"]), statistics.fmean(st["a_s"])
        rows.append([kind, n, f"{b:.2f}", f"{a:.2f}", f"{b / a:.2f}x",
                     (f"{statistics.fmean(st['b_pms']) / 1000:.2f} / "
                     f"{statistics.fmean(st['b_dms']) / 1000:.2f}"),
                     f"{statistics.fmean(st['b_pre']):.0f} / {statistics.fmean(st['a_pre']):.0f}",
                     f"{statistics.fmean(st['b_tok']):.1f} / {statistics.fmean(st['a_tok']):.1f}"])
    print_table("likelihood cost per item (same items, interleaved; one llama.cpp thread)",
                ["item", "n", "s before", "s after", "speed-up",
                 "before: prefill s / forced-decode s", "prefill tokens evaluated before / after",
                 "forced tokens before / after"], rows)
    absd = sorted(abs(d) for d in diffs)
    print(f"mean log-prob, after - before, per scored pair: median |diff| "
          f"{absd[len(absd) // 2]:.3f}, max {absd[-1]:.3f} (n={len(diffs)}); load {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"per": per, "diffs": diffs}, indent=2))


if __name__ == "__main__":
    main()
