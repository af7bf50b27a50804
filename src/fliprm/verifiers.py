"""IFEval / IFBench instruction checkers: did a response follow the prompt's verifiable constraints?

A row is the IFEval/IFBench JSONL schema: ``prompt``, ``instruction_id_list`` and ``kwargs`` (one
dict of checker arguments per instruction). :func:`verify` runs each instruction's checker on a
response, strictly (the response as is) and loosely (also with the first/last line dropped or
markdown ``*`` removed, the official loose rule), and returns a :class:`Verdict`.

The checkers are the ``if-verifiable`` package's (``pip install 'fliprm[verify]'``), imported on
first use. Some need NLTK data (punkt_tab, stopwords, a POS tagger) that no package on PyPI
carries and fliprm never downloads at run time: where the data is not installed locally (NLTK's
own search path, ``NLTK_DATA``) those checkers raise :class:`VerifierUnavailable`, naming the
instruction and the data, instead of guessing a verdict.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import FlipError, InputError, MissingDependency

__all__ = ["Suite", "Verdict", "VerifierUnavailable", "verifier_reward", "verify"]

Suite = Literal["ifeval", "ifbench"]
SUITES: tuple[str, ...] = ("ifeval", "ifbench")

_INSTALL = "the verifiers need their extra: pip install 'fliprm[verify]'"


class VerifierUnavailable(FlipError):
    """A checker cannot give a verdict: its NLTK data is not installed here, or the row's kwargs
    leave an argument unset or invalid, so the upstream checker would draw it at random (a few
    official IFEval/IFBench rows do). ``instruction`` and ``reason`` say which and why."""

    def __init__(self, message: str, *, instruction: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.instruction = instruction
        self.reason = reason


@dataclass(frozen=True)
class Verdict:
    """One response against one row: prompt level (every instruction followed) and per
    instruction, strict and loose.

    >>> Verdict(True, True, [True], [True]).prompt_strict
    True
    """

    prompt_strict: bool
    prompt_loose: bool
    inst_strict: list[bool]
    inst_loose: list[bool]


def _refuse_download(*_: object, **__: object) -> bool:
    return False  # fliprm never fetches data at run time; a missing resource is reported instead


@functools.cache
def _registry(suite: str) -> dict[str, Any]:
    try:
        import nltk
    except ImportError:
        raise MissingDependency(_INSTALL) from None
    # IFBench's module calls nltk.download() at import time: block it for the import
    real, nltk.download = nltk.download, _refuse_download
    try:
        if suite == "ifeval":
            from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
        else:
            from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    except ImportError:
        raise MissingDependency(_INSTALL) from None
    finally:
        nltk.download = real
    return dict(INSTRUCTION_DICT)


def _check_row(row: Mapping[str, Any], suite: str) -> tuple[str, list[str], list[dict[str, Any]]]:
    if suite not in SUITES:
        raise InputError(f"unknown verifier suite {suite!r}; use ifeval or ifbench")
    prompt, ids, kwargs = row.get("prompt"), row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(prompt, str):
        raise InputError("'prompt' must be a string")
    if isinstance(kwargs, str):  # some exports store the kwargs column as JSON text
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            raise InputError("'kwargs' is a string but not JSON") from None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise InputError("'instruction_id_list' must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(
        isinstance(k, dict) or k is None for k in kwargs
    ):
        raise InputError(f"'kwargs' must be a list of {len(ids)} objects, one per instruction")
    return prompt, ids, [k or {} for k in kwargs]


def _args_key(checker: Any) -> str:
    return json.dumps(checker.get_instruction_args(), sort_keys=True, default=str)


@functools.lru_cache(maxsize=4096)
def _build(suite: str, iid: str, kwargs_json: str, prompt: str) -> Any:
    cls = _registry(suite).get(iid)
    if cls is None:
        raise InputError(f"unknown {suite} instruction {iid!r}")
    given = {k: v for k, v in json.loads(kwargs_json).items() if v is not None}
    # a checker fills any argument it is not given with a random value: build it under two
    # seeds and refuse kwargs that leave the verdict to chance
    state = random.getstate()
    built = []
    try:
        for seed in (0, 1):
            random.seed(seed)
            c = cls(iid)
            try:
                c.build_description(**given)
                args = c.get_instruction_args()
                if args and "prompt" in args:
                    c.build_description(prompt=prompt)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{suite} instruction {iid!r}: bad kwargs {given}: {exc}") from None
            built.append(c)
    finally:
        random.setstate(state)
    if _args_key(built[0]) != _args_key(built[1]):
        a, b = built[0].get_instruction_args() or {}, built[1].get_instruction_args() or {}
        keys = sorted(k for k in a if a.get(k) != b.get(k))
        unset, got = ", ".join(keys), {k: given.get(k) for k in keys}
        # not an InputError: official rows do this (IFEval letter '#', IFBench n_start 0)
        raise VerifierUnavailable(
            f"{suite} instruction {iid!r}: kwargs leave {unset} unset or invalid (given {got}; "
            "the checker would pick a random value)", instruction=f"{suite}:{iid}",
            reason=f"kwargs leave {unset} to chance")
    return built[0]


def _follows(checker: Any, text: str, suite: str, iid: str) -> bool:
    if not text.strip():
        return False
    try:
        return bool(checker.check_following(text))
    except LookupError as exc:
        res = next((r for r in ("punkt_tab", "punkt", "averaged_perceptron_tagger_eng",
                                "stopwords") if r in str(exc)), "an NLTK resource")
        raise VerifierUnavailable(
            f"{suite} instruction {iid!r} needs NLTK data {res!r}, which is not installed "
            f"(fliprm never downloads it; `python -m nltk.downloader {res}` installs it)",
            instruction=f"{suite}:{iid}", reason=f"NLTK data {res!r} not installed",
        ) from None


def verify(row: Mapping[str, Any], response: str, suite: Suite) -> Verdict:
    """Check ``response`` against every instruction of ``row`` (the IFEval/IFBench schema).

    Raises InputError for a malformed row or an unknown instruction id (the upstream skips
    those, which would pass a prompt vacuously), MissingDependency without the ``verify`` extra
    and VerifierUnavailable where a checker's NLTK data is not installed or the kwargs would
    leave its verdict to chance. A ``<think>`` block is dropped first; an empty response fails
    everything.

    >>> row = {"prompt": "Answer in lowercase.", "kwargs": [{}],
    ...        "instruction_id_list": ["change_case:english_lowercase"]}
    >>> verify(row, "all lowercase here.", "ifeval").prompt_strict
    True
    """
    prompt, ids, kwargs = _check_row(row, suite)
    from if_verifiable.common import get_loose_transformations, strip_thinking

    text = strip_thinking(response if isinstance(response, str) else "")
    variants = get_loose_transformations(text) if text.strip() else []
    strict, loose = [], []
    for iid, kw in zip(ids, kwargs):
        checker = _build(suite, iid, json.dumps(kw, sort_keys=True, default=str), prompt)
        strict.append(_follows(checker, text, suite, iid))
        loose.append(any(_follows(checker, v, suite, iid) for v in variants))
    return Verdict(all(strict), all(loose), strict, loose)


def _text(x: Any) -> str:
    # TRL passes strings, or chat messages (a list of {"role", "content"}) in conversational mode
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content") or "")
    return "" if x is None else str(x)


def verifier_reward(suite: Suite) -> Callable[..., list[float]]:
    """A TRL-style reward function: 1.0 where a completion passes every instruction of its
    prompt (prompt-level loose), else 0.0. The dataset needs ``instruction_id_list`` and
    ``kwargs`` columns (TRL hands them over as keyword arguments).

    >>> fn = verifier_reward("ifeval")
    >>> fn(["Answer in lowercase."], ["ok then."],
    ...    instruction_id_list=[["change_case:english_lowercase"]], kwargs=[[{}]])
    [1.0]
    """
    if suite not in SUITES:
        raise InputError(f"unknown verifier suite {suite!r}; use ifeval or ifbench")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list[float]:
        ids, kwargs = kw.get("instruction_id_list"), kw.get("kwargs")
        if ids is None or kwargs is None:
            raise InputError(f"{suite} verifier reward needs the dataset columns "
                             "'instruction_id_list' and 'kwargs'")
        if not len(prompts) == len(completions) == len(ids) == len(kwargs):
            raise InputError(f"{suite} verifier reward: prompts, completions, "
                             "instruction_id_list and kwargs differ in length")
        out = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            row = {"prompt": _text(p), "instruction_id_list": ids[i], "kwargs": kwargs[i]}
            try:
                v = verify(row, _text(c), suite)
            except InputError as exc:
                raise InputError(f"{suite} verifier reward, sample {i}: {exc}") from None
            out.append(1.0 if v.prompt_loose else 0.0)
        return out

    reward.__name__ = f"{suite}_verifier"
    return reward
