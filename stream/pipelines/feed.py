"""A live video feed cut into one-second chunks sampled at a fixed rate.

Frames arrive with their own timestamps (seconds, non-decreasing). Second ``k`` is ready once a
frame at or after ``k + 1`` has arrived; its ``fps`` sample slots take, for slot ``j``, the last
frame at or before ``k + j / fps``, or else the first one after it. Only the newest
``max_buffered_seconds`` are kept: a feed that arrives faster than it is understood loses its
oldest seconds (the newest win), and :attr:`FrameFeed.skipped_seconds` counts them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from framestream.stream.errors import InputError

__all__ = ["FeedChunk", "FrameFeed", "TimestampsBackwardsError"]


class TimestampsBackwardsError(InputError):
    """A frame older than the previous one."""


@dataclass(frozen=True, slots=True)
class FeedChunk:
    second: int  # chunk covers [second, second + 1)
    frames: list[np.ndarray]  # ``fps`` uint8 [H, W, 3] frames


class FrameFeed:
    """Buffer of timestamped frames, handed out a second at a time.

    Args:
        fps: sample frames per second (StreamingVLM: 2).
        max_buffered_seconds: seconds kept waiting; older ones are skipped.
    """

    def __init__(self, fps: int = 2, max_buffered_seconds: int = 4) -> None:
        if fps <= 0 or max_buffered_seconds <= 0:
            raise ValueError(
                f"fps and max_buffered_seconds must be positive: {fps}, {max_buffered_seconds}"
            )
        self.fps = fps
        self.max_buffered_seconds = max_buffered_seconds
        self._times: list[float] = []
        self._frames: list[np.ndarray] = []
        self.next_second = 0
        self.skipped_seconds = 0
        self.latest_time = -math.inf

    def push(self, timestamp: float, frame: np.ndarray) -> None:
        """Add a frame; raises :class:`TimestampsBackwardsError` if it is older than the last."""
        if not math.isfinite(timestamp) or timestamp < 0:
            raise ValueError(f"timestamp must be a finite number >= 0, got {timestamp}")
        if timestamp < self.latest_time:
            raise TimestampsBackwardsError(
                f"frame at {timestamp:.3f} s is older than the previous one "
                f"at {self.latest_time:.3f} s"
            )
        # a slot samples the last frame at or before its time: of the frames between two slot
        # times only the last can ever be used, so it replaces the others (memory stays bounded)
        if self._times and math.ceil(self._times[-1] * self.fps) == math.ceil(timestamp * self.fps):
            self._times[-1], self._frames[-1] = timestamp, frame
        else:
            self._times.append(timestamp)
            self._frames.append(frame)
        self.latest_time = timestamp
        self._drop_stale()

    def ready(self) -> bool:
        return self.latest_time >= self.next_second + 1

    @property
    def lag_seconds(self) -> float:
        """How far the next second to understand trails the newest frame."""
        return max(0.0, self.latest_time - (self.next_second + 1))

    def take(self) -> FeedChunk | None:
        """The next complete second, or None."""
        if not self.ready():
            return None
        k = self.next_second
        frames = []
        for j in range(self.fps):
            at = k + j / self.fps
            i = bisect.bisect_right(self._times, at) - 1  # -1: no frame yet, take the first after
            frames.append(self._frames[max(i, 0)])
        self.next_second += 1
        self._forget_before(self.next_second)
        return FeedChunk(k, frames)

    def _drop_stale(self) -> None:
        newest_complete = math.floor(self.latest_time) - 1
        oldest_kept = newest_complete - self.max_buffered_seconds + 1
        if oldest_kept > self.next_second:
            self.skipped_seconds += oldest_kept - self.next_second
            self.next_second = oldest_kept
            self._forget_before(self.next_second)

    def _forget_before(self, second: int) -> None:
        """Drop frames no longer needed, keeping the last one before ``second`` for its slot 0."""
        cut = bisect.bisect_right(self._times, second) - 1
        if cut > 0:
            del self._times[:cut]
            del self._frames[:cut]
