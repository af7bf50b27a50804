"""The OpenAI chat-completions wire format, with the llama.cpp and vLLM extensions fliprm uses.

Both the embedded backend (llama.cpp's server loop called in-process) and the HTTP backend build
request bodies and read replies here, so the two never drift apart. What vLLM does with each
field was checked against a real vLLM 0.32 server (tests/real_vllm, tests/fixtures/vllm).
"""

from __future__ import annotations

import json
from typing import Any

from .._types import Completion, GenerateRequest
from ..errors import BadResponse

__all__ = ["build_body", "read_reply"]


#: server families whose request extensions differ
DIALECTS = ("llamacpp", "vllm", "generic")


def build_body(
    request: GenerateRequest,
    *,
    model: str | None = None,
    schema_mode: str = "response_format",
    extra_body: dict[str, Any] | None = None,
    dialect: str = "llamacpp",
) -> dict[str, Any]:
    """An OpenAI chat-completions body for ``request``.

    ``schema_mode`` is ``"response_format"`` (OpenAI, vLLM, SGLang, llama.cpp, Ollama),
    ``"json_schema"`` (llama.cpp's native field) or ``"off"``. ``dialect`` says which
    extensions the server understands:

    * ``"llamacpp"``: a GBNF ``grammar`` goes in the top-level ``grammar`` field; a trailing
      assistant message is continued as it is.
    * ``"vllm"``: vLLM *ignores* a top-level ``grammar`` without a word (it answers with free
      text), so the grammar goes in ``structured_outputs: {"grammar": ...}``, which vLLM 0.32
      applies (GBNF). A trailing assistant message is closed and a new assistant turn opened
      unless the body says ``continue_final_message: true, add_generation_prompt: false``,
      which it then does. (vLLM's old ``guided_json``/``guided_grammar`` fields are gone and
      ignored the same way.) Servers that report ``owned_by: "sglang"`` get this dialect as well;
      that is not tested.
    * ``"generic"``: neither; a grammar is not sent, and an assistant prefix is sent as a
      plain trailing message (what the server does with it is its own).

    Teacher forcing (``forced_text``) is not a chat body: on llama.cpp the instruction's own
    tokens are forced one at a time (:mod:`._forcing`), on vLLM it is scored from prompt
    log-probabilities (a ``structured_outputs`` grammar returns log-probabilities renormalised
    after its mask: a forced token comes back at 0.0, not a likelihood).
    """
    if request.forced_text is not None:
        raise ValueError("a forced text is scored by the backend's likelihood path, not a chat body")
    messages: list[dict[str, str]] = [dict(m) for m in request.messages]
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if model:
        body["model"] = model
    if request.seed is not None:
        body["seed"] = request.seed
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.assistant_prefix is not None:
        # Prefill: the reply continues this assistant message (on vLLM only when told so).
        messages.append({"role": "assistant", "content": request.assistant_prefix})
        if dialect == "vllm":
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    if request.grammar is not None:
        if dialect == "llamacpp":
            body["grammar"] = request.grammar
        elif dialect == "vllm":
            body["structured_outputs"] = {"grammar": request.grammar}
    if request.json_schema is not None and schema_mode != "off":
        if schema_mode == "json_schema":
            body["json_schema"] = request.json_schema
        else:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
            }
    if extra_body:
        body.update(extra_body)
    return body


def read_reply(data: Any, *, latency_s: float, prefix: str | None = None) -> Completion:
    """Turn a chat-completions reply into a :class:`Completion`; raise BadResponse if malformed.

    ``prefix``: the request's ``assistant_prefix``. llama.cpp returns the continued assistant
    message whole (prefix included), vLLM only the new text; a Completion always holds only
    what the model generated, so the prefix is removed where the server echoed it.

    >>> data = {"choices": [{"message": {"content": '{"A": "x"}'}}]}
    >>> read_reply(data, latency_s=0.0, prefix='{"A": "').text
    'x"}'
    """
    if not isinstance(data, dict):
        raise BadResponse(f"reply is not a JSON object: {str(data)[:200]}")
    if "error" in data and "choices" not in data:
        err = data["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise BadResponse(f"backend error: {msg}")
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            text = choice.get("text", "")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BadResponse(f"reply has no choices[0].message: {json.dumps(data)[:300]}") from None
    usage = data.get("usage") or {}
    timings = data.get("timings") or {}
    backend_s = None
    if timings:
        backend_s = (timings.get("prompt_ms", 0.0) + timings.get("predicted_ms", 0.0)) / 1000.0
    if prefix and text and text.startswith(prefix):
        text = text[len(prefix):]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None and "cache_n" in timings:
        cached = timings["cache_n"]
    logprobs = None
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        logprobs = [(t.get("token", ""), float(t.get("logprob", 0.0))) for t in lp["content"]]
    # llama.cpp and older vLLM: reasoning_content; vLLM 0.32: reasoning
    reasoning = ((message.get("reasoning_content") or message.get("reasoning"))
                 if isinstance(message, dict) else None)
    return Completion(
        text=text or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason"),
        latency_s=latency_s,
        backend_s=backend_s,
        cached_prompt_tokens=cached,
        token_logprobs=logprobs,
        extra={"reasoning_content": reasoning} if reasoning else {},
    )
