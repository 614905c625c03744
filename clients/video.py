"""MP4 output of the client tools: H.264 (libx264, yuv420p) at a constant rate."""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

__all__ = ["Mp4Writer"]


class Mp4Writer:
    """Frames ``[H, W, 3]`` uint8 RGB in, an MP4 out. The first frame fixes the size: later
    frames of another size are resized to it, and odd sizes are padded to even (H.264 needs
    even sizes). ``close`` flushes the encoder and is idempotent."""

    def __init__(self, path: Path, rate: float | fractions.Fraction, crf: int = 20) -> None:
        self.path = path
        self.rate = fractions.Fraction(rate).limit_denominator(1001)
        self.crf = crf
        self.container: Any = None
        self.stream: Any = None
        self.size: tuple[int, int] | None = None  # (width, height) of the first frame
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if self.container is None:
            self.size = (width, height)
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height = width + width % 2, height + height % 2
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        elif (width, height) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
            width, height = self.size
        if width % 2 or height % 2:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video.pts = self.frames
        video.time_base = 1 / self.rate
        self.container.mux(self.stream.encode(video))
        self.frames += 1

    def close(self) -> None:
        container, self.container = self.container, None
        if container is not None:
            try:
                container.mux(self.stream.encode(None))
            finally:
                container.close()
