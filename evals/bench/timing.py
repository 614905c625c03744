"""Wall-clock timing that waits for the device, and the summaries every suite reports.

Device work is asynchronous, so a reading of the host clock is taken only after the device has
drained (``torch.cuda.synchronize``). Wall time, not kernel time, is what a viewer waits for:
host overhead between kernels counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "PERCENTILES",
    "Clock",
    "Difference",
    "difference",
    "interquartile_range",
    "late_over_early",
    "percentiles",
]

PERCENTILES = (50, 90, 95, 99)
T = TypeVar("T")


class Clock:
    """Milliseconds on the host clock, each reading taken with ``device`` drained."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() * 1e3

    def time(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """``fn(*args)`` and its milliseconds."""
        start = self.now()
        out = fn(*args)
        return out, self.now() - start


def percentiles(values: Sequence[float]) -> dict[int, float]:
    """The :data:`PERCENTILES` of ``values`` (linear interpolation), e.g. ``{50: ..., 95: ...}``."""
    if not values:
        raise ValueError("no values to summarise")
    return {p: float(np.percentile(values, p)) for p in PERCENTILES}


def late_over_early(values: Sequence[float]) -> float | None:
    """Median of the last third over the median of the first third: 1.0 for a flat cost, above
    it for one that grows with the stream (None under three values)."""
    third = len(values) // 3
    if third == 0:
        return None
    return float(np.median(values[-third:]) / np.median(values[:third]))


def interquartile_range(values: Sequence[float]) -> float:
    """The 75th percentile minus the 25th (linear interpolation): how far a sample's middle
    half spreads; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    low, high = np.percentile(values, (25, 75))
    return float(high - low)


@dataclass(frozen=True, slots=True)
class Difference:
    """A figure that is one measurement minus another, and the spread it has to beat: a
    difference smaller than the measurements' own scatter says nothing, not even its sign."""

    value: float  # the first measurement minus the second, in their unit
    spread: float  # the larger interquartile range of the two samples, same unit

    @classmethod
    def of(cls, value: float, first: Sequence[float], second: Sequence[float]) -> Difference:
        """``value`` (computed from the samples ``first`` and ``second``) with their spread."""
        return cls(value, max(interquartile_range(first), interquartile_range(second)))

    @property
    def within_noise(self) -> bool:
        return abs(self.value) <= self.spread


def difference(first: Sequence[float], second: Sequence[float]) -> Difference:
    """The median of ``first`` minus the median of ``second``, with their spread."""
    return Difference.of(float(np.median(first) - np.median(second)), first, second)
