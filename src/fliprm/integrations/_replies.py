"""Reading a ``fliprm serve`` ``/v1/score`` reply without trusting it: every result is matched
to its item by the ``index`` (or echoed ``id``) it carries and type-checked field by field, so
a dropped, reordered or garbled result fails its own item and never moves a reward to another.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import ERROR_KINDS
from ..result import FlipResult

__all__ = ["is_number", "match_results", "result_from_json"]

_RESULT_FIELDS = {f.name for f in dataclasses.fields(FlipResult)}
# the JSON type each of these result fields must have where it is not null: anything else in
# a reply is that item's failure, never a value passed on to the trainer
_NUMBER_FIELDS = ("precision", "recall", "logprob", "latency_s")
_TEXT_FIELDS = ("inferred_instruction", "reasoning", "raw_output", "parse_error", "error",
                "method", "model", "template")


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): the only thing a reward may be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def result_from_json(obj: Any) -> FlipResult:
    """A :class:`FlipResult` from one result of a ``/v1/score`` reply, checking the type of
    every field an adapter reads; raises ``ValueError`` (``TypeError`` for a non-object) naming
    the first bad field.

    >>> result_from_json({"reward": 0.5, "method": "pmi"}).reward
    0.5
    >>> result_from_json({"reward": "0.5"})
    Traceback (most recent call last):
    ...
    ValueError: reward is not a finite number: '0.5'
    """
    if not isinstance(obj, dict):
        raise TypeError(f"result is not an object: {str(obj)[:60]!r}")
    if "reward" not in obj:
        raise ValueError("result has no reward")
    d = {k: v for k, v in obj.items() if k in _RESULT_FIELDS}
    reward, error = d.get("reward"), d.get("error")
    if reward is None and error is None:
        raise ValueError("reward is null but the result names no error")
    if reward is not None and not is_number(reward):
        raise ValueError(f"reward is not a finite number: {reward!r}")
    for k in _NUMBER_FIELDS:
        if d.get(k) is not None and not is_number(d[k]):
            raise ValueError(f"{k} is not a finite number: {d[k]!r}")
    for k in _TEXT_FIELDS:
        if d.get(k) is not None and not isinstance(d[k], str):
            raise ValueError(f"{k} is not text: {d[k]!r}")
    for k in ("parse_ok", "cached", "truncated"):
        if k in d and not isinstance(d[k], bool):
            raise ValueError(f"{k} is not a boolean: {d[k]!r}")
    for k in ("prompt_tokens", "completion_tokens"):
        if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool)):
            raise ValueError(f"{k} is not an integer: {d[k]!r}")
    if "extra" in d and not isinstance(d["extra"], dict):
        raise ValueError(f"extra is not an object: {d['extra']!r}")
    if d.get("method") is None:
        d.pop("method", None)
    if d.get("error_kind") not in (None, *ERROR_KINDS):
        d["error_kind"] = None  # a kind this client does not know (a newer server): unknown
    return FlipResult(**d)


def match_results(reply: Any, n: int) -> list[FlipResult | str]:
    """Each of ``n`` sent items' result from a ``/v1/score`` reply, matched by the ``index``
    (or, from servers before it, the echoed ``id``) every result must carry; an item with no
    result, a result claimed twice, or a malformed one gets an error string instead.

    >>> reply = {"results": [{"index": 1, "reward": 0.2}, {"index": 0, "reward": 0.1}]}
    >>> [r.reward for r in match_results(reply, 2)]
    [0.1, 0.2]
    >>> match_results({"results": []}, 1)
    ['reply has no result for item 0 (0 results for 1 items)']
    """
    if not isinstance(reply, dict) or not isinstance(reply.get("results"), list):
        got = type(reply).__name__ if not isinstance(reply, dict) else (
            "no results" if "results" not in reply else f"results as {type(reply['results']).__name__}")
        return [f"malformed reply ({got})"] * n
    claimed: dict[int, list[Any]] = {}
    unkeyed = 0
    for r in reply["results"]:
        key = _result_key(r)
        if key is None:
            unkeyed += 1
        else:
            claimed.setdefault(key, []).append(r)
    out: list[FlipResult | str] = []
    for i in range(n):
        mine = claimed.get(i, [])
        if len(mine) > 1:
            out.append(f"reply has {len(mine)} results for item {i}")
        elif not mine:
            why = f" ({unkeyed} results carry no index)" if unkeyed else ""
            out.append(f"reply has no result for item {i} "
                       f"({len(reply['results'])} results for {n} items){why}")
        else:
            try:
                out.append(result_from_json(mine[0]))
            except (TypeError, ValueError) as exc:
                out.append(f"item {i}: {exc}")
    return out


def _result_key(r: Any) -> int | None:
    if not isinstance(r, dict):
        return None
    index, rid = r.get("index"), r.get("id")
    ok = [v for v in (index, rid) if isinstance(v, int) and not isinstance(v, bool)]
    if not ok or (index is not None and rid is not None and index != rid):
        return None  # no key, or two keys that disagree: trust neither
    return ok[0]
