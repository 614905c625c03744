"""Messages shared by the generation pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FrameChunk", "GenerationRequest"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a generation session starts from."""

    prompt: str
    seed: int = 0
    height: int | None = None  # pixels; the preset's default when None
    width: int | None = None

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt must not be empty")


@dataclass(frozen=True, slots=True)
class FrameChunk:
    """Frames one step produced."""

    frames: np.ndarray  # uint8 [n, H, W, 3]
    first_index: int  # stream index of frames[0]
    fps: float  # nominal frame rate of the stream

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def timestamps(self) -> np.ndarray:
        """Presentation time of each frame, in seconds."""
        return (self.first_index + np.arange(len(self.frames))) / self.fps
