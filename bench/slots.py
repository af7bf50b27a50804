"""llama.cpp parallel slots on a CPU: what decoding several sequences together buys.

One process, one llama.cpp thread (pin it: ``taskset -c 1``), the embedded model; the same work
is timed one sequence at a time and with every sequence in its own slot at once:

* ``chat``: N sampled chat completions of 64 tokens (generation: FLIP, explain, best-of-N);
* ``forced-grammar``: N instructions teacher-forced in one request each (a grammar of the
  text's own token ids; what the likelihood and pmi methods send);
* ``forced-steps``: the same, one request per token (the fallback for servers without
  token-id grammars).

    taskset -c 1 python bench/slots.py --slots 4 --out bench/results/slots.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from _common import print_table
from sets import read_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import httpx

    from fliprm import RewardConfig
    from fliprm.backends.embedded import EmbeddedBackend
    from fliprm.methods import INSTRUCTION_KEY, Item, render

    n = args.slots
    b = EmbeddedBackend(n_threads=args.threads, n_parallel=n)
    b.start()
    server, auth = b._server, {"Authorization": f"Bearer {b.api_key}"}
    fam = RewardConfig().family()
    rows = read_rows("ifbench")[10 : 10 + n]
    forced_jobs = []
    for r in rows:
        msgs = render(Item(r["prompt"][:400], r["response"][:600], None, fam.main, "bench"))
        prompt = httpx.post(b.http_url + "/apply-template", headers=auth,
                            json={"messages": [dict(m) for m in msgs]}).json()["prompt"]
        prompt += '{"' + INSTRUCTION_KEY + '": "'
        forced = json.dumps(r["prompt"][:400])[1:-1]

        def tok(text: str) -> list[int]:
            return httpx.post(b.http_url + "/tokenize", headers=auth,
                              json={"content": text, "parse_special": True}).json()["tokens"]

        head = tok(prompt)
        forced_jobs.append((head, tok(prompt + forced)[len(head):]))

    def prefill(j: int, slot: int) -> None:
        server.handle_completions({"prompt": forced_jobs[j][0], "max_tokens": 1,
                                   "temperature": 0.0, "id_slot": slot})

    def chat(j: int, slot: int) -> int:
        r = server.handle_chat_completions({
            "messages": [{"role": "user", "content": f"Write a long story about dragon {j}."}],
            "max_tokens": 64, "temperature": 0.8, "seed": j, "id_slot": slot})
        return int(r["usage"]["completion_tokens"])

    def grammar(j: int, slot: int) -> int:
        head, ids = forced_jobs[j]
        server.handle_completions({
            "prompt": head, "max_tokens": len(ids), "temperature": 0.0, "logprobs": 1,
            "grammar": "root ::= " + " ".join(f"<[{i}]>" for i in ids), "id_slot": slot})
        return len(ids)

    def steps(j: int, slot: int) -> int:
        head, ids = forced_jobs[j]
        for k in range(len(ids)):
            server.handle_completions({
                "prompt": head + ids[:k], "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                "logit_bias": [[ids[k], 100.0]], "id_slot": slot})
        return len(ids)

    def together(fn) -> float:  # type: ignore[no-untyped-def]
        threads = [threading.Thread(target=fn, args=(j, j)) for j in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    results = []
    for name, fn in (("chat", chat), ("forced-grammar", grammar), ("forced-steps", steps)):
        together(prefill)  # every slot holds its prompt: only decoding is timed
        t0 = time.perf_counter()
        tokens = sum(fn(j, j) for j in range(n))
        one = time.perf_counter() - t0
        together(prefill)
        both = together(fn)
        results.append({"work": name, "sequences": n, "tokens": tokens,
                        "one_at_a_time_s": round(one, 2), "all_at_once_s": round(both, 2),
                        "speedup": round(one / both, 2)})
        print(f"{name}: {one:.1f}s one at a time, {both:.1f}s together", file=sys.stderr)
    cols = ["work", "sequences", "tokens", "one_at_a_time_s", "all_at_once_s", "speedup"]
    print_table(f"llama.cpp slots, {args.threads} thread(s), {n} sequences", cols,
                [[r[k] for k in cols] for r in results])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"),
                                        "threads": args.threads, "results": results}, indent=2))
    b.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
