"""Media encoding: MP4 recording through PyAV (H.264, yuv420p)."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

__all__ = ["Mp4Writer"]

logger = logging.getLogger(__name__)


class Mp4Writer:
    """Append uint8 RGB frames ``[H, W, 3]`` to an H.264 MP4 at a constant frame rate.

    Usable as a context manager; ``close`` flushes the encoder and is idempotent, so a recording
    stopped at any point is a playable file. Errors of the disk (``OSError``) reach the caller of
    ``write`` or ``close``, and the file is closed either way.

    Args:
        path: output file; its folder must exist.
        fps: frame rate of the stream.
        crf: x264 quality (lower is better; 18 is visually lossless for most content).
        fragmented: write a fragmented MP4 (the header first, then a fragment per key frame),
            which a player or PyAV reads as it arrives, with no index at the end to seek to.
    """

    def __init__(
        self, path: str | Path, fps: float, crf: int = 18, fragmented: bool = False
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.frames_written = 0
        # the file is ours, not FFmpeg's: when the trailer cannot be written (a full disk)
        # PyAV raises without closing a file it opened, and its descriptor would leak
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        try:
            options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
            self._container = av.open(
                self._file, mode="w", format="mp4", options=options if fragmented else {}
            )
            self._stream = self._container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": str(crf)}
            )
        except BaseException:
            self._file.close()
            raise
        self._stream.pix_fmt = "yuv420p"
        self._size: tuple[int, int] | None = None
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Append ``[H, W, 3]`` or ``[N, H, W, 3]`` uint8 frames; H and W must be even."""
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        size = (frames.shape[2], frames.shape[1])
        if self._size is None:
            if size[0] % 2 or size[1] % 2:
                raise ValueError(f"H.264 needs even frame sizes, got {size[0]}x{size[1]}")
            self._stream.width, self._stream.height = size
            self._size = size
        elif size != self._size:
            raise ValueError(f"frame size changed from {self._size} to {size}")
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._size is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            try:
                self._container.close()
            finally:
                self._file.close()
        logger.info("wrote %d frames to %s", self.frames_written, self.path)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
