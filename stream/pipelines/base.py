"""Messages shared by the generation pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FrameChunk", "PendingChunk"]


@dataclass(frozen=True, slots=True)
class FrameChunk:
    """Frames one step produced."""

    frames: np.ndarray  # uint8 [n, H, W, 3]
    first_index: int  # stream index of frames[0] (a restyle stream's: its input slot's)
    fps: float  # nominal frame rate of the stream
    # a restyle stream's: time.monotonic() each frame's input frame arrived; None otherwise
    input_arrivals: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def timestamps(self) -> np.ndarray:
        """Presentation time of each frame, in seconds."""
        return (self.first_index + np.arange(len(self.frames))) / self.fps


@dataclass(frozen=True, eq=False)
class PendingChunk:
    """A step's frames, possibly still in flight on the device (see ``step_async``)."""

    frames: np.ndarray  # uint8 [n, H, W, 3]; on CUDA a view of pinned memory being filled
    first_index: int
    fps: float
    done: torch.cuda.Event | None = None  # recorded after the copy to host; None: ready
    input_arrivals: np.ndarray | None = None  # as FrameChunk's

    @classmethod
    def ready(cls, chunk: FrameChunk) -> PendingChunk:
        """A chunk whose frames are already on the host."""
        return cls(chunk.frames, chunk.first_index, chunk.fps, None, chunk.input_arrivals)

    def __len__(self) -> int:
        return len(self.frames)

    def result(self) -> FrameChunk:
        """Wait for the frames (on CUDA: for the decode stream's event only) and return them."""
        if self.done is not None:
            self.done.synchronize()
        return FrameChunk(self.frames, self.first_index, self.fps, self.input_arrivals)
