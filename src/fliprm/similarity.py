"""Word-level F1 between an inferred instruction and the real one.

The default semantics match the FLIP reference (SQuAD-style answer normalisation) bit for bit:
lowercase; delete ASCII punctuation (``string.punctuation``: curly quotes and dashes survive);
replace the whole words ``a``, ``an``, ``the`` with a space; split on whitespace; count overlap as a
multiset intersection; no overlap gives 0.

Other similarities plug in through :data:`SIMILARITIES` (name -> function returning :class:`F1`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["F1", "SIMILARITIES", "Similarity", "f1_score", "get_similarity", "normalize_text"]

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclass(frozen=True, slots=True)
class F1:
    """Similarity of a prediction to a reference: ``f1`` is the reward."""

    f1: float
    precision: float
    recall: float


def normalize_text(s: str) -> str:
    """Normalise text the way the FLIP reference does before counting words.

    >>> normalize_text("The Cat, a dog!")
    'cat dog'
    """
    s = s.lower()
    s = s.translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, reference: str) -> F1:
    """Word-level F1 of ``prediction`` (the inferred instruction) against ``reference``.

    Precision is overlap / words in the prediction, recall is overlap / words in the reference.

    >>> round(f1_score("What is the capital of France?", "capital of France").f1, 3)
    0.75
    """
    pred = normalize_text(prediction).split()
    ref = normalize_text(reference).split()
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return F1(0.0, 0.0, 0.0)
    precision = overlap / len(pred)
    recall = overlap / len(ref)
    return F1(2 * precision * recall / (precision + recall), precision, recall)


Similarity = Callable[[str, str], F1]

SIMILARITIES: dict[str, Similarity] = {"f1": f1_score}


def get_similarity(name: str) -> Similarity:
    """Look up a similarity by name (``"f1"`` is the only built-in, and the default)."""
    from .errors import ConfigError

    try:
        return SIMILARITIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown similarity {name!r}; known: {', '.join(sorted(SIMILARITIES))}"
        ) from None
