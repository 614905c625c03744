"""Judge-free measures of live commentary against the reference, implemented here.

Text is compared as lower-case word tokens (letters, digits and apostrophes):

- :func:`word_f1`: bag-of-words overlap (clipped counts), precision / recall / F1;
- :func:`rouge_l`: ROUGE-L, the longest common word subsequence, as precision / recall / F1.

Timing is compared per second of the stream (a second "speaks" when its text has a word):

- :func:`speech_timing`: whether the system speaks when the reference does, within
  ``tolerance`` seconds either way;
- :func:`best_offset`: the shift of the system's seconds against the reference's that best
  matches their words; positive means the system speaks late;
- :func:`silence_rate`: the fraction of silent seconds.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Distribution",
    "Offset",
    "Overlap",
    "best_offset",
    "distribution",
    "rouge_l",
    "silence_rate",
    "speech_timing",
    "tokens",
    "word_f1",
]

_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True, slots=True)
class Overlap:
    precision: float
    recall: float
    f1: float

    @classmethod
    def of(cls, matched: float, candidates: int, references: int) -> Overlap:
        """From ``matched`` units out of ``candidates`` proposed and ``references`` expected;
        two empty sides agree perfectly."""
        if candidates == 0 and references == 0:
            return cls(1.0, 1.0, 1.0)
        precision = matched / candidates if candidates else 0.0
        recall = matched / references if references else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1)


@dataclass(frozen=True, slots=True)
class Offset:
    seconds: int  # the best shift; positive: the system is late
    f1_at_zero: float  # mean per-second word F1 without a shift
    f1_at_best: float  # ... at the best shift


@dataclass(frozen=True, slots=True)
class Distribution:
    count: int
    mean: float
    p50: float
    p95: float
    max: float


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_f1(candidate: str, reference: str) -> Overlap:
    got, want = collections.Counter(tokens(candidate)), collections.Counter(tokens(reference))
    matched = sum((got & want).values())
    return Overlap.of(matched, sum(got.values()), sum(want.values()))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)  # one row of the DP table, over the shorter sequence
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(candidate: str, reference: str) -> Overlap:
    got, want = tokens(candidate), tokens(reference)
    return Overlap.of(_lcs_length(got, want), len(got), len(want))


def silence_rate(texts: Sequence[str]) -> float:
    """Fraction of ``texts`` (one per second) without a word; 0 for no seconds."""
    return sum(not tokens(t) for t in texts) / len(texts) if texts else 0.0


def speech_timing(system: Sequence[str], reference: Sequence[str], tolerance: int = 1) -> Overlap:
    """Speaking seconds of ``system`` against those of ``reference`` (same seconds, one text
    each): a system second is right when the reference speaks within ``tolerance`` seconds of
    it, a reference second is caught when the system does."""
    if len(system) != len(reference):
        raise ValueError(f"system and reference cover {len(system)} and {len(reference)} s")
    said = [bool(tokens(t)) for t in system]
    heard = [bool(tokens(t)) for t in reference]

    def near(flags: list[bool], k: int) -> bool:
        return any(flags[max(0, k - tolerance) : k + tolerance + 1])

    right = sum(near(heard, k) for k, s in enumerate(said) if s)
    caught = sum(near(said, k) for k, h in enumerate(heard) if h)
    spoken, expected = sum(said), sum(heard)
    precision = right / spoken if spoken else float(expected == 0)
    recall = caught / expected if expected else float(spoken == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Overlap(precision, recall, f1)


def _shifted_f1(system: Sequence[str], reference: Sequence[str], shift: int) -> float:
    """Mean word F1 of reference second ``k`` against system second ``k + shift``, over the
    seconds where either says something."""
    scores = []
    for k, want in enumerate(reference):
        j = k + shift
        got = system[j] if 0 <= j < len(system) else ""
        if tokens(got) or tokens(want):
            scores.append(word_f1(got, want).f1)
    return sum(scores) / len(scores) if scores else 1.0


def best_offset(system: Sequence[str], reference: Sequence[str], max_shift: int = 5) -> Offset:
    """The shift in ``-max_shift..max_shift`` seconds that best aligns the system's words with
    the reference's (ties go to the smallest shift)."""
    if len(system) != len(reference):
        raise ValueError(f"system and reference cover {len(system)} and {len(reference)} s")
    scores = {d: _shifted_f1(system, reference, d) for d in range(-max_shift, max_shift + 1)}
    best = max(scores, key=lambda d: (scores[d], -abs(d), d))
    return Offset(best, scores[0], scores[best])


def distribution(values: Sequence[float]) -> Distribution | None:
    """Count, mean, median, 95th percentile (nearest rank) and maximum; None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return Distribution(
        len(ordered), sum(ordered) / len(ordered), rank(0.5), rank(0.95), ordered[-1]
    )
