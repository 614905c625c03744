"""A restyle stream's input: timestamped frames resampled into the pipeline's frame slots, and
the strength that says which denoising levels take the input as their clean estimate.

Output frame ``i`` of a restyle stream corresponds to input slot ``i``, at ``t0 + i / fps`` on
the input's own clock (``t0``: the first input frame's timestamp). A slot takes the last input
frame at or before its time, centre-cropped to the session's aspect and resized to its size::

    input (any rate)   a         b    c              d
    time          ---- |----|----|----|----|----|----|----|---->   slot times t0 + i / fps
    slots              a    a    b    c    c    c    d             each complete once a frame
                                                                   at or after its time is in

Slots are handed out a chunk at a time (the pipeline's 9 frames for a stream's first chunk,
then 12: what the causal VAE encoder takes). At most ``max_input_frames`` complete slots wait;
past that the oldest whole chunks are skipped (:attr:`InputSlots.skipped_frames`), so a feed
that arrives faster than it is restyled keeps its newest frames and memory stays bounded.

Strength ``s`` in (0, 1]: every level whose sigma is over ``s`` takes the encoded input as its
clean estimate; the first level at or under it starts from the input noised to it. At 1.0 no
level is over it and the stream is plain generation.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from framestream.models.vae import EncodeState
from framestream.stream.errors import InputError
from framestream.stream.pipelines.feed import TimestampsBackwardsError

__all__ = [
    "InputSlots",
    "NotRestyleError",
    "RestyleState",
    "TakenInput",
    "fit_frame",
    "levels_over",
]

# Slot times are compared within this many slots: a feed stamped i / fps by a client lands on
# slot i whatever the float rounding of its clock.
_SLOT_TOLERANCE = 1e-6


class NotRestyleError(InputError):
    """Input (frames or a strength) for a generation stream that is not a restyle stream."""


def levels_over(sigmas: tuple[float, ...], strength: float) -> int:
    """How many of ``sigmas`` are over ``strength``: the levels that take the input as their
    clean estimate (for a schedule's descending sigmas, the index of the first level run)."""
    return sum(sigma > strength for sigma in sigmas)


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``frame`` (uint8 ``[H, W, 3]``) centre-cropped to ``width / height`` and resized to
    ``[height, width, 3]`` (bilinear, antialiased when shrinking)."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    if h * width > w * height:  # taller than the target: crop rows
        rows = max(1, round(w * height / width))
        top = (h - rows) // 2
        frame = frame[top : top + rows]
    elif h * width < w * height:  # wider: crop columns
        cols = max(1, round(h * width / height))
        left = (w - cols) // 2
        frame = frame[:, left : left + cols]
    pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    out = F.interpolate(pixels, (height, width), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


@dataclass(frozen=True, slots=True)
class TakenInput:
    """A chunk's input slots, taken for encoding."""

    first_index: int  # slot (= output frame) index of frames[0]
    frames: np.ndarray  # uint8 [n, H, W, 3] at the session's size
    arrivals: np.ndarray  # float64 [n]: time.monotonic() each slot's frame arrived


@dataclass(slots=True)
class _Frame:
    timestamp: float
    pixels: np.ndarray | None  # as pushed, until it is fitted
    arrival: float
    fitted: np.ndarray | None = None  # at the session's size, made when a slot first takes it


class InputSlots:
    """Timestamped frames resampled into ``fps`` slots, handed out a chunk at a time.

    Args:
        fps: slots per second of input (the pipeline's frame rate).
        height, width: the session's frame size; every slot is fitted to it.
        max_frames: complete slots kept waiting; more skip the oldest whole chunks.
        first_chunk, chunk: slots of a stream's first chunk and of every later one.
    """

    def __init__(
        self,
        fps: float,
        height: int,
        width: int,
        max_frames: int,
        first_chunk: int = 9,
        chunk: int = 12,
    ) -> None:
        if max_frames < first_chunk or max_frames < chunk:
            raise ValueError(f"max_frames ({max_frames}) must hold a chunk ({chunk} slots)")
        self.fps, self.height, self.width = fps, height, width
        self.max_frames, self.first_chunk, self.chunk = max_frames, first_chunk, chunk
        self.t0: float | None = None
        self.next_index = 0  # the first slot not yet taken or skipped
        self.chunks_taken = 0
        self.frames_taken = 0
        self.skipped_frames = 0
        self._last: _Frame | None = None
        # complete slots from next_index on: (frame, completed) with completed the
        # time.monotonic() of the push that made the slot complete
        self._slots: collections.deque[tuple[_Frame, float]] = collections.deque()

    def push(self, timestamp: float, frame: np.ndarray, arrival: float) -> None:
        """Add a frame that arrived at ``arrival`` (``time.monotonic()``).

        Raises:
            InputError: not a uint8 ``[H, W, 3]`` frame, or a timestamp not finite and >= 0.
            TimestampsBackwardsError: older than the frame before it.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise InputError(f"input frames must be uint8 [H, W, 3], got {type(frame).__name__}")
        if frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise InputError(f"input frames must be uint8 [H, W, 3], got {frame.shape}")
        if not math.isfinite(timestamp) or timestamp < 0:
            raise InputError(f"timestamp must be a finite number >= 0, got {timestamp}")
        last = self._last
        if last is not None and timestamp < last.timestamp:
            raise TimestampsBackwardsError(
                f"frame at {timestamp:.3f} s is older than the previous one "
                f"at {last.timestamp:.3f} s"
            )
        if self.t0 is None:
            self.t0 = timestamp
        new = _Frame(timestamp, frame, arrival)
        position = (timestamp - self.t0) * self.fps  # in slots
        first = self.next_index + len(self._slots)  # the first incomplete slot
        stop = math.floor(position + _SLOT_TOLERANCE) + 1  # slots before it are now complete
        first += self._skip_overflow(stop - first)
        for index in range(first, stop):
            # an earlier slot's frame is the last one before it: the previous frame
            source = new if index >= position - _SLOT_TOLERANCE or last is None else last
            if source.fitted is None:
                source.fitted = fit_frame(source.pixels, self.height, self.width)
                source.pixels = None  # only the fitted frame is kept
            self._slots.append((source, arrival))
        self._last = new

    def chunk_sizes(self, chunks: int) -> list[int]:
        """Slots of each of the next ``chunks`` chunks."""
        first = self.chunks_taken == 0
        return [self.first_chunk if first and i == 0 else self.chunk for i in range(chunks)]

    def ready(self, chunks: int = 1) -> bool:
        """Whether the next ``chunks`` chunks' slots are all complete."""
        return len(self._slots) >= sum(self.chunk_sizes(chunks))

    def completed_at(self, chunks: int = 1) -> float | None:
        """``time.monotonic()`` when the next ``chunks`` chunks' slots became complete."""
        if not self.ready(chunks):
            return None
        return self._slots[sum(self.chunk_sizes(chunks)) - 1][1]

    def take(self) -> TakenInput:
        """The next chunk's slots (ready)."""
        (size,) = self.chunk_sizes(1)
        if len(self._slots) < size:
            raise ValueError(f"the next chunk's {size} input slots are not all in")
        slots = [self._slots.popleft() for _ in range(size)]
        taken = TakenInput(
            self.next_index,
            np.stack([frame.fitted for frame, _ in slots]),
            np.array([frame.arrival for frame, _ in slots], dtype=np.float64),
        )
        self.next_index += size
        self.chunks_taken += 1
        self.frames_taken += size
        return taken

    def _skip_overflow(self, coming: int) -> int:
        """Skip the oldest whole chunks that would leave more than ``max_frames`` complete
        slots once ``coming`` more are; returns how many of the coming ones were skipped."""
        over = len(self._slots) + coming - self.max_frames
        if over <= 0:
            return 0
        # a skipped chunk is never encoded, so the chunk size stays: a timestamp far ahead
        # skips its chunks in one go
        (size,) = self.chunk_sizes(1)
        skip = math.ceil(over / size) * size
        self.next_index += skip
        self.skipped_frames += skip
        held = min(skip, len(self._slots))
        for _ in range(held):
            self._slots.popleft()
        return skip - held


@dataclass(eq=False)
class RestyleState:
    """What a restyle stream owns beside a generation stream's state."""

    strength: float  # read at the start of each step: a change applies from the next chunk
    slots: InputSlots
    encode_state: EncodeState
    # taken chunks whose frames are not yet out, oldest first: each output chunk's indices
    # and arrivals (LongLive: one per step; Rolling Forcing: the blocks in the window)
    outputs: collections.deque[TakenInput] = field(default_factory=collections.deque)

    @property
    def skipped_frames(self) -> int:
        return self.slots.skipped_frames

    @property
    def frames_taken(self) -> int:
        return self.slots.frames_taken
