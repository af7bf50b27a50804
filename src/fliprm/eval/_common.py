"""Pieces shared by the RewardBench 2 runner and the best-of-N reranker."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..backends import Backend
from ..cache import ResponseCache
from ..config import RewardConfig, RuntimeOptions
from ..engine import Engine
from ..judges import Judge, Judgment, get_judge
from ..records import ResultWriter

__all__ = ["JudgeFactory", "RecordSink", "failure_kind", "failure_message", "identify_judges",
           "judge_factory", "words"]

JudgeFactory = Callable[[str, int], Judge]


def words(text: str) -> int:
    return len(text.split())


def failure_message(j: Judgment) -> str | None:
    """The ``error`` of a record whose judge calls failed, or None when every call answered.

    >>> from fliprm.judges import Judgment
    >>> failure_message(Judgment([None], [0], 0, calls=4, failed_calls=1, errors=["BackendTimeout: x"]))
    '1 of 4 judge calls failed: BackendTimeout: x'
    """
    if not j.failed_calls:
        return None
    first = j.errors[0] if j.errors else "no message"
    return f"{j.failed_calls} of {j.calls} judge calls failed: {first}"


def failure_kind(j: Judgment) -> str | None:
    """The ``error_kind`` of a failed record: its first failed call's (see
    :data:`fliprm.errors.ErrorKind`), or None when every call answered.

    >>> failure_kind(Judgment([None], [0], 0, calls=2, failed_calls=1, errors=["BackendTimeout: x"],
    ...                       error_kinds=["timeout"]))
    'timeout'
    """
    if not j.failed_calls:
        return None
    return j.error_kinds[0] if j.error_kinds else "internal"


def judge_factory(
    backend: Backend,
    config: RewardConfig | None = None,
    *,
    runtime: RuntimeOptions | None = None,
    cache: ResponseCache | str | Path | None = None,
) -> JudgeFactory:
    """``make(method, seed) -> Judge``; every judge shares one Engine over ``backend`` (built
    by :meth:`Engine.from_runtime` from ``runtime`` and ``cache``: retries, deadline,
    concurrency cap, response cache) and the decoding and truncation settings of ``config``.

    >>> from fliprm.backends.fake import FakeBackend
    >>> make = judge_factory(FakeBackend([]), runtime=RuntimeOptions(max_retries=0))
    >>> make("pointwise", 1).engine is make("listwise", 2).engine
    True
    >>> make("flip", 0).reward.engine.max_retries
    0
    """
    engine = Engine.from_runtime(backend, runtime or RuntimeOptions(), cache=cache)
    return _SharedEngineJudges(engine, config or RewardConfig())


class _SharedEngineJudges:
    """``make(method, seed)``; ``engine`` is exposed so its owner can close it (and its cache)."""

    def __init__(self, engine: Engine, config: RewardConfig) -> None:
        self.engine = engine
        self.config = config

    def __call__(self, method: str, seed: int) -> Judge:
        return get_judge(method, backend=self.engine.backend, engine=self.engine, seed=seed,
                         config=self.config)


class RecordSink:
    """Where a judged run's records go: appended to ``out`` when given (resumable: :attr:`done`
    holds the ids already there), kept in :attr:`new`, and told to ``on_record``.

    The manifest beside ``out`` holds ``settings`` (each method's judge identity) and
    ``input_identity``; ``force``, ``retry_errors`` and ``merge`` are :class:`ResultWriter`'s.
    :meth:`close` closes the output.

    >>> sink = RecordSink(None, settings={})
    >>> sink.add({"id": "a"})
    >>> sink.new, sink.done
    ([{'id': 'a'}], set())
    """

    def __init__(
        self,
        out: str | Path | None,
        *,
        settings: dict[str, Any],
        input_identity: dict[str, Any] | None = None,
        force: bool = False,
        retry_errors: bool | Callable[[dict[str, Any]], bool] = False,
        merge: bool = False,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        manifest: dict[str, Any] = {"settings": settings}
        if input_identity is not None:
            manifest["input"] = input_identity
        self._writer = (ResultWriter(out, key_field="id", manifest=manifest, merge=merge,
                                     force=force, retry_errors=retry_errors)
                        if out is not None else None)
        self.done: set[str] = self._writer.done if self._writer else set()
        self.new: list[dict[str, Any]] = []
        self._on_record = on_record

    def add(self, rec: dict[str, Any]) -> None:
        """Write ``rec`` (a finished record), keep it and tell ``on_record``."""
        if self._writer:
            self._writer.write(rec)
        self.new.append(rec)
        if self._on_record:
            self._on_record(rec)

    def close(self) -> None:
        if self._writer:
            self._writer.close()


async def identify_judges(judges: Iterable[Judge]) -> None:
    """Have each judge's backend say what it serves (an HTTP judge: its server's model) before
    the judges' identities are recorded beside an output, so a resume on another model under
    the same name is refused. Raises the backend's error if its server cannot be reached.

    >>> import asyncio
    >>> from fliprm.judges import LongestJudge
    >>> asyncio.run(identify_judges([LongestJudge()]))  # no model: nothing to ask
    """
    seen: set[int] = set()
    for judge in judges:
        engine = getattr(judge, "engine", None) or getattr(getattr(judge, "reward", None),
                                                           "engine", None)
        if isinstance(engine, Engine) and id(engine) not in seen:
            seen.add(id(engine))
            await engine.identify()
