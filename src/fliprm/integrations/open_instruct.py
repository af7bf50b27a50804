"""FLIP as an open-instruct verifier named ``general-flip``.

open-instruct routes each RLVR row to the verifier named by its ``dataset`` column and passes
the row's ``ground_truth`` as ``label``. For FLIP, put the original instruction in
``ground_truth`` and ``general-flip`` in ``dataset``.

This module does not import open_instruct: :class:`FlipVerifier` has the ``VerifierFunction``
call shape on its own. To have ``build_all_verifiers`` pick it up, call
:func:`register_with_open_instruct` once before training starts; it defines a subclass of the
real ``VerifierFunction`` (which is how open-instruct discovers verifiers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from ..result import FlipResult
from ._common import FlipSettings, failed, known_settings, run_sync, score_batch

__all__ = [
    "FlipVerifier",
    "FlipVerifierConfig",
    "VerificationResult",
    "register_with_open_instruct",
]


@dataclass
class VerificationResult:
    """Same fields as open-instruct's ``VerificationResult``."""

    score: float
    cost: float = 0.0
    reasoning: str | None = None


class _VerifierSettings:
    """Judge settings; ``None`` fields fall back to ``FLIPRM_*`` env vars.

    One field ``flip_<name>`` per fliprm setting (every :class:`~fliprm.config.RewardConfig`,
    :class:`~fliprm.config.RuntimeOptions` and adapter option, derived, so a new setting needs
    no edit here). ``from_args`` reads same-named attributes from open-instruct's argument
    objects, so a launch script may add e.g. ``flip_server_url`` or ``flip_method`` to its args;
    unknown names are ignored.
    """

    @classmethod
    def from_args(cls, *sources: Any) -> Any:
        values: dict[str, Any] = {}
        for src in sources:
            for f in fields(cls):  # type: ignore[arg-type]
                if src is not None and getattr(src, f.name, None) is not None:
                    values[f.name] = getattr(src, f.name)
        return cls(**values)

    def settings(self) -> FlipSettings:
        return FlipSettings.from_env(
            **{f.name.removeprefix("flip_"): getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        )


FlipVerifierConfig = make_dataclass(
    "FlipVerifierConfig",
    [(f"flip_{name}", Any, field(default=None)) for name in sorted(known_settings())],
    bases=(_VerifierSettings,),
    namespace={"__doc__": _VerifierSettings.__doc__, "__module__": __name__},
)


def _label_text(label: Any) -> Any:
    if isinstance(label, (list, tuple)) and len(label) == 1:
        return label[0]
    return label


class FlipVerifier:
    """FLIP verifier: score = the FLIP reward of ``prediction`` for the instruction ``label``,
    by the configured method (pmi under the RL default; word F1 with ``flip_method="f1"``).

    ``reasoning`` names the method and the reward, plus the inferred instruction where the
    judge made one. A failed judge call scores ``failure_score`` (0.0: open-instruct needs a
    number) and ``reasoning`` starts with ``flip failed:`` and says why.

    Example:
        >>> v = FlipVerifier(FlipVerifierConfig(flip_server_url="http://127.0.0.1:8080"))
        >>> v.name
        'general-flip'
        >>> v([], "Paris is the capital of France.", "Name the capital of France.")  # doctest: +SKIP
        VerificationResult(score=0.62, cost=0.0, reasoning='pmi reward 0.6200')
    """

    result_cls: type = VerificationResult

    def __init__(
        self,
        verifier_config: Any = None,
        *,
        name: str = "general-flip",
        weight: float = 1.0,
    ) -> None:
        self.name = name
        self.weight = weight
        self.verifier_config = verifier_config or FlipVerifierConfig()

    @classmethod
    def get_config_class(cls) -> type:
        return FlipVerifierConfig

    def __call__(
        self,
        tokenized_prediction: list[int],
        prediction: str,
        label: Any,
        query: str | None = None,
        rollout_state: Any = None,
    ) -> Any:
        return run_sync(self.async_call(tokenized_prediction, prediction, label, query))

    async def async_call(
        self,
        tokenized_prediction: list[int],
        prediction: str,
        label: Any,
        query: str | None = None,
        rollout_state: Any = None,
    ) -> Any:
        settings = self.verifier_config.settings()
        [res] = await score_batch(settings, [_label_text(label)], [prediction])
        if failed(res):
            return self.result_cls(
                score=settings.adapter.failure_score, cost=0.0, reasoning=f"flip failed: {res.error}"
            )
        return self.result_cls(score=float(res.reward), cost=0.0, reasoning=_reasoning(res))


def _reasoning(res: FlipResult) -> str:
    """What the score is, in words: method and reward, then what else the judge said.

    >>> _reasoning(FlipResult(reward=0.5, method="f1", inferred_instruction="Say hi."))
    'f1 reward 0.5000; inferred instruction: Say hi.'
    """
    parts = [f"{res.method} reward {res.reward:.4f}"]
    if res.inferred_instruction:
        parts.append(f"inferred instruction: {res.inferred_instruction}")
    if res.parse_error:
        parts.append(res.parse_error)
    return "; ".join(parts)


def register_with_open_instruct() -> type:
    """Define ``general-flip`` as a real ``VerifierFunction`` subclass and return it.

    Call before ``build_all_verifiers`` (it instantiates every subclass with its config).
    """
    from open_instruct.ground_truth_utils import VerificationResult as OIResult
    from open_instruct.ground_truth_utils import VerifierFunction

    global _registered
    if _registered is None:

        class OpenInstructFlipVerifier(FlipVerifier, VerifierFunction):  # type: ignore[misc,valid-type]
            result_cls = OIResult

            def __init__(self, verifier_config: Any = None) -> None:
                FlipVerifier.__init__(self, verifier_config)

        _registered = OpenInstructFlipVerifier
    return _registered


_registered: type | None = None
