"""Teacher forcing on llama.cpp with the text's own tokenization: log p(forced | prompt).

llama.cpp's server returns no prompt log-probabilities, so a forced text has to be *decoded*.
Forcing it with a grammar that admits exactly one string is not enough: the grammar admits
every tokenization of that string, greedy decoding picks whichever split the model likes best
at each step ("W" + "rite" instead of "Write"), and the summed log-probability then depends on
float noise (measured: 9 vs 11 tokens and a 10x different reward for the same pair, depending
on the request before it). Here each token of the text's canonical tokenization (what vLLM's
``prompt_logprobs`` scores) is forced in turn with a logit bias, and its *raw* log-probability
is read back (llama.cpp reports probabilities from the logits before any sampler, so the bias
does not show). Each step evaluates one token; the prompt before it comes from llama.cpp's
prompt cache, so scoring several instructions against one response pays for its prefill once.

The steps are written as a generator of ``(path, body)`` requests (no I/O here), driven by the
embedded backend in-process and by the HTTP backend against ``llama-server``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .._types import Completion, GenerateRequest
from ..errors import BadResponse

__all__ = ["OPTIONAL", "PROMPT_PASS", "forcing_steps"]

#: large enough that the forced token always wins, small enough to stay finite in fp16 logits
_BIAS = 100.0
#: body key (popped by the drivers) marking a request whose failure is sent back to the
#: generator as ``{"error": ...}`` instead of raised: it has a fallback
OPTIONAL = "_fliprm_optional"
#: pseudo path of the one-pass step (``{"ids", "start"}`` in, ``{"logprobs", "cached"}`` back):
#: only a driver with llama.cpp's library in process answers it (see :mod:`._libllama`)
PROMPT_PASS = "fliprm:prompt-pass"

Step = tuple[str, dict[str, Any]]


def forcing_steps(
    request: GenerateRequest, *, exact: bool = False, one_request: bool = True,
    prompt_pass: bool = False,
) -> Generator[Step, Any, Completion]:
    """Yield llama.cpp server requests; return a Completion whose ``token_logprobs`` are the
    forced text's tokens with their log-probabilities (``text`` is the forced text).

    ``exact``: the first step reprocesses the whole prompt (no reuse of another item's
    prefix), so the result does not depend on the request before it. ``one_request``: try the
    whole text in one grammar-forced request first (see below). ``prompt_pass``: the driver
    evaluates the whole sequence in one forward pass (:data:`PROMPT_PASS`) instead of steps.
    """
    forced = request.forced_text or ""
    messages = [dict(m) for m in request.messages]
    tmpl = yield "/apply-template", {"messages": messages}
    if not isinstance(tmpl, dict) or not isinstance(tmpl.get("prompt"), str):
        raise BadResponse(f"/apply-template returned no prompt: {str(tmpl)[:200]}")
    prompt = tmpl["prompt"] + (request.assistant_prefix or "")
    full = yield "/tokenize", {"content": prompt + forced, "parse_special": True,
                               "with_pieces": True}
    head = yield "/tokenize", {"content": prompt, "parse_special": True}
    tokens = _tokens(full)
    head_ids = [t if isinstance(t, int) else t["id"] for t in _raw(head)]
    ids = [i for i, _ in tokens]
    # The text's tokens start where the prompt's own tokenization stops agreeing with the
    # whole one (a BPE merge across the boundary is rare: then the merged token is forced too).
    start = 0
    while start < min(len(head_ids), len(ids)) and head_ids[start] == ids[start]:
        start += 1
    if start >= len(ids):
        raise BadResponse("the forced text added no tokens to the prompt")
    logprobs: list[tuple[str, float]] = []
    cached = None
    if prompt_pass:
        got = yield PROMPT_PASS, {"ids": ids, "start": start}
        return Completion(
            text=forced, prompt_tokens=start, completion_tokens=len(ids) - start,
            finish_reason="stop", cached_prompt_tokens=got["cached"],
            token_logprobs=[(tokens[start + j][1], lp) for j, lp in enumerate(got["logprobs"])],
            extra={"forced": "prompt-pass"},
        )
    # Over HTTP, one request first: a grammar of the text's own token ids (llama.cpp's
    # ``<[id]>``) admits exactly this tokenization and the server decodes it in its own loop,
    # so a remote llama-server costs one round trip instead of one per token. Log-probabilities
    # are read before the grammar applies, so they are the model's own (measured: identical to
    # the per-token steps). A server that does not take the grammar, or answers with other
    # tokens, falls back to the steps. In-process there is no round trip to save and the
    # grammar's sampling costs a little (bench/slots.py, one core: 286 tokens in 25.2 s vs
    # 23.4 s one at a time, 12.5 s vs 10.8 s in 4 slots), so the embedded backend steps.
    whole = None if not one_request else (yield "/v1/completions", {
        "prompt": ids[:start], "max_tokens": len(ids) - start, "temperature": 0.0,
        "logprobs": 1, "grammar": "root ::= " + " ".join(f"<[{i}]>" for i in ids[start:]),
        "cache_prompt": not exact, OPTIONAL: True,
    })
    got = None if whole is None else _read_all(whole, ids[start:])
    if got is not None:
        usage = whole.get("usage") or {}
        return Completion(
            text=forced, prompt_tokens=start, completion_tokens=len(got), finish_reason="stop",
            token_logprobs=[(tokens[start + j][1], lp) for j, lp in enumerate(got)],
            cached_prompt_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            extra={"forced": "canonical-tokens-grammar"},
        )
    for k in range(start, len(ids)):
        body = {"prompt": ids[:k], "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                "logit_bias": [[ids[k], _BIAS]], "cache_prompt": not (exact and k == start)}
        reply = yield "/v1/completions", body
        logprobs.append((tokens[k][1], _read_logprob(reply, ids[k])))
        if k == start:  # how much of the prompt llama.cpp's cache served (prefix reuse)
            usage = reply.get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return Completion(
        text=forced, prompt_tokens=start, completion_tokens=len(logprobs),
        finish_reason="stop", token_logprobs=logprobs, cached_prompt_tokens=cached,
        extra={"forced": "canonical-tokens"},
    )


def _read_all(reply: Any, ids: list[int]) -> list[float] | None:
    """The log-probabilities of ``ids`` from a one-request forcing reply, or None when the
    reply is an error or holds other tokens (then the caller forces token by token)."""
    try:
        content = reply["choices"][0]["logprobs"]["content"]
        if [e.get("id") for e in content] != ids:
            return None
        return [float(e["logprob"]) for e in content]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _raw(reply: Any) -> list[Any]:
    if not isinstance(reply, dict) or not isinstance(reply.get("tokens"), list):
        raise BadResponse(f"/tokenize returned no tokens: {str(reply)[:200]}")
    return reply["tokens"]


def _tokens(reply: Any) -> list[tuple[int, str]]:
    out = []
    for t in _raw(reply):
        if isinstance(t, dict):
            piece = t.get("piece", "")
            out.append((int(t["id"]), piece if isinstance(piece, str) else bytes(piece).decode(
                "utf-8", "replace")))
        else:
            out.append((int(t), ""))
    return out


def _read_logprob(reply: Any, token_id: int) -> float:
    try:
        entry = reply["choices"][0]["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        raise BadResponse(f"completion reply has no logprobs: {str(reply)[:300]}") from None
    if entry.get("id") not in (None, token_id):
        raise BadResponse(f"the server did not force token {token_id} (got {entry.get('id')})")
    return float(entry["logprob"])
