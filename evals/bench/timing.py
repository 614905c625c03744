"""Wall-clock timing that waits for the device, and the summaries every suite reports.

Device work is asynchronous, so a reading of the host clock is taken only after the device has
drained (``torch.cuda.synchronize``). Wall time, not kernel time, is what a viewer waits for:
host overhead between kernels counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = ["PERCENTILES", "Clock", "late_over_early", "percentiles"]

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
