"""The echo guard: a defence against FLIP's known weakness, a response that restates the
instruction.

Word-F1 (and the likelihood of the instruction) rewards a policy that copies the instruction
into its answer ("You asked me to ...") because the judge then reconstructs the instruction from
the copy, not from the answer. The guard masks, before backward inference:

* every run of at least ``min_words`` consecutive words that also occurs in the instruction
  (compared after :func:`fliprm.normalize_text`); and
* every *near copy*, at any instruction length: a stretch of the response about as long as the
  instruction that holds at least ``coverage`` (70%) of the instruction's content words (stop words
  do not count), in any order. This catches short instructions ("Write a haiku about autumn
  leaves"), swapped words and light paraphrases that keep the words.

Honest answers echo a few words all the time ("Here are three tips for better sleep:" holds 3
of the 5 content words of "Give me three tips for sleeping better"), and those stay.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from .similarity import normalize_text

__all__ = ["STOP_WORDS", "mask_instruction_echo"]

# A word is a run of non-space characters; a literal escape sequence (\n, \t, \r, \",
# \\, \u00e9) separates words too: an instruction copied into a JSON string inside the
# response arrives escaped ("bug.\\nIs == bad?"), and must still match word for word.
_ESCAPE = r'\\(?:[ntr"\\/]|u[0-9a-fA-F]{4})'
_TOKEN = re.compile(rf'(?P<esc>{_ESCAPE})|(?:(?!{_ESCAPE})[^\s])+')


def _words(text: str) -> list[re.Match[str]]:
    return [m for m in _TOKEN.finditer(text) if m.group("esc") is None]
MASK = "[...]"
#: words too common to show that a stretch copies the instruction
STOP_WORDS = frozenset(
    ["i", "me", "my", "we", "our", "you", "your", "he", "she", "it", "its", "they", "them", "their", "this", "that", "these", "those", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "have", "has", "had", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "into", "about", "and", "or", "but", "if", "so", "than", "then", "not", "no", "any", "all", "each", "some", "can", "could", "should", "would", "will", "shall", "may", "might", "must", "what", "which", "who", "whom", "how", "why", "when", "where", "please"]
)


def _runs(seq: list[str], instr: list[str], min_words: int) -> set[int]:
    """Positions of ``seq`` inside runs of ``min_words`` words copied from ``instr``."""
    if len(instr) < min_words:
        return set()
    grams = {tuple(instr[i : i + min_words]) for i in range(len(instr) - min_words + 1)}
    hit: set[int] = set()
    for j in range(len(seq) - min_words + 1):
        if tuple(seq[j : j + min_words]) in grams:
            hit.update(range(j, j + min_words))
    return hit


def _near_copies(seq: list[str], instr: list[str], coverage: float) -> set[int]:
    """Positions of content words in stretches that cover ``coverage`` of the instruction's."""
    want = Counter(w for w in instr if w not in STOP_WORDS)
    n = sum(want.values())
    if n < 2:
        return set()  # one content word proves nothing
    need = max(2, math.ceil(coverage * n))
    width = len(instr) + max(2, len(instr) // 4)
    hit: set[int] = set()
    have: Counter[str] = Counter()
    overlap = 0
    scanned = -1  # positions up to here are marked already: linear, not len(seq) * width
    for j, w in enumerate(seq):
        if w in want:
            have[w] += 1
            overlap += have[w] <= want[w]
        k = j - width
        if k >= 0 and seq[k] in want:
            overlap -= have[seq[k]] <= want[seq[k]]
            have[seq[k]] -= 1
        if overlap >= need:
            lo = max(0, j - width + 1, scanned + 1)
            hit.update(i for i in range(lo, j + 1) if seq[i] in want)
            scanned = j
    return hit


def mask_instruction_echo(
    response: str, instruction: str, *, min_words: int = 6, coverage: float = 0.7
) -> tuple[str, int]:
    """Mask spans of ``response`` copied from ``instruction``; return (text, words masked).

    >>> mask_instruction_echo("Sure! Write a poem about the sea in five lines. Roses are red.",
    ...                       "Write a poem about the sea in five lines.")
    ('Sure! [...] Roses are red.', 9)
    >>> mask_instruction_echo("Bananas are yellow. You asked: write about autumn a haiku leaves.",
    ...                       "Write a haiku about autumn leaves")[0]
    'Bananas are yellow. You asked: [...]'
    >>> mask_instruction_echo("Here are three tips for better sleep: go to bed early.",
    ...                       "Give me three tips for sleeping better")[1]
    0
    """
    words = _words(response)
    norm = [normalize_text(m.group()) for m in words]
    instr = normalize_text(instruction).split()
    # Articles and pure punctuation normalise to ""; compare on the remaining words only.
    keep = [i for i, w in enumerate(norm) if w]
    seq = [norm[i] for i in keep]
    hit = _runs(seq, instr, min_words) | _near_copies(seq, instr, coverage)
    covered = [False] * len(words)
    for k in hit:
        covered[keep[k]] = True
    if not any(covered):
        return response, 0
    # Words between two masked words (articles, stop words, punctuation) belong to the copy.
    last_hit = None
    for i, c in enumerate(covered):
        if c:
            if last_hit is not None and i - last_hit <= 3:
                for g in range(last_hit + 1, i):
                    covered[g] = True
            last_hit = i
    out, last, i = [], 0, 0
    while i < len(words):
        if not covered[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(words) and covered[j + 1]:
            j += 1
        out.append(response[last : words[i].start()])
        out.append(MASK)
        last = words[j].end()
        i = j + 1
    out.append(response[last:])
    return "".join(out), sum(covered)
