"""A stretch of a video file as the frames a live feed would deliver, one per sample slot.

Slot ``j`` of a stretch starting at ``start`` sits at ``start + j / fps`` and takes the last frame
shown at or before it (the first frame when none is): the frame the service's feed would sample
there. Frames are stamped with the slot's time relative to ``start``, so a feed second ``k`` of
the service is exactly video second ``start + k``::

    video   |  f  f  f  f  f  f  f  f  f  f  f  f  f  f  f  f  |  ...
    slots   0        0.5          1.0       1.5         2.0       (fps = 2, relative seconds)
            └─ second 0 of the feed ┘└─ second 1 ────────┘ closed by the frame at 2.0

The stretch ``[start, end)`` yields ``(end - start) * fps + 1`` frames: the last, at
``end - start``, closes the final second. Past the end of the file the last frame repeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

__all__ = ["VideoReadError", "probe_duration", "sample_frames"]

_EPSILON = 1e-6  # seconds; PTS rounding


class VideoReadError(Exception):
    """The file cannot be opened or decoded as a video."""


def _open(path: Path):
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoReadError(f"{path}: cannot open as a video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: no video stream")
    return container


def probe_duration(path: Path) -> float | None:
    """Seconds of video in ``path``, when the container says; else None."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
    return None


def sample_frames(path: Path, start: int, end: int, fps: int) -> Iterator[tuple[float, np.ndarray]]:
    """``(seconds since start, uint8 [H, W, 3] RGB)`` for every sample slot of ``[start, end)``
    (see the module docstring)."""
    slots = (end - start) * fps + 1
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        offset = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        if start > 0:  # to the keyframe at or before start; decoding goes on from there
            container.seek(int((start + offset) / stream.time_base), stream=stream, backward=True)
        slot = 0
        newest = None  # the newest frame at or before the next slot (converted when used)
        pixels: np.ndarray | None = None  # ``newest`` as RGB, once converted
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                time = frame.time - offset
                while slot < slots and time > start + slot / fps + _EPSILON:
                    if pixels is None:  # nothing before the first slot: take the first frame
                        pixels = (frame if newest is None else newest).to_ndarray(format="rgb24")
                    yield slot / fps, pixels
                    slot += 1
                if slot >= slots:
                    return
                newest, pixels = frame, None
        except av.FFmpegError as exc:
            at = start + slot / fps
            raise VideoReadError(f"{path}: decoding failed at {at:.1f} s ({exc})") from None
        if newest is None:
            raise VideoReadError(f"{path}: no frame at or after {start} s")
        pixels = newest.to_ndarray(format="rgb24") if pixels is None else pixels
        while slot < slots:
            yield slot / fps, pixels
            slot += 1
