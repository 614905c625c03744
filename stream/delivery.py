"""Frame delivery helpers of the server: per-session frame encoders, MP4 recorders, the
decoding of input frames, and a restyle session's input-to-output latency.

Both run off the event loop. An encoder is used by one session's sender, one frame at a time;
a recorder takes frames from any thread without blocking and writes them on its own single
worker, dropping (and counting) frames when more than ``max_pending`` wait for the disk::

    engine thread --OutputQueue tap--> Recorder.add --(bounded)--> worker: Mp4Writer.write
    sender task --get--> FrameEncoder.encode (thread pool) --> ws.send
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from framestream.stream.image_size import ImageHeaderError, jpeg_size, png_size
from framestream.stream.media import Mp4Writer
from framestream.stream.protocol import FrameFormat, FrameHeader, ProtocolError
from framestream.stream.session import OutputFrame

__all__ = ["FrameEncoder", "InputLatency", "Recorder", "decode_input_frame"]

logger = logging.getLogger(__name__)


class FrameEncoder:
    """Turns uint8 RGB frames ``[H, W, 3]`` into one format's payloads (one session's).

    Args:
        fmt: the wire format.
        fps: frame rate of the stream (H.264 timing and keyframe interval).
        quality: JPEG quality 1..100.
    """

    def __init__(self, fmt: FrameFormat, fps: float, quality: int = 85) -> None:
        self.format = fmt
        self.fps = fps
        self.quality = quality
        self._h264: av.CodecContext | None = None

    def encode(self, frame: OutputFrame) -> bytes:
        pixels = frame.pixels
        if self.format is FrameFormat.RAW:
            return np.ascontiguousarray(pixels).tobytes()
        if self.format is FrameFormat.H264:
            return self._encode_h264(frame)
        bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        if self.format is FrameFormat.JPEG:
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        else:
            ok, data = cv2.imencode(".png", bgr)
        if not ok:
            raise RuntimeError(f"cv2.imencode failed for a {pixels.shape} frame")
        return data.tobytes()

    def _encode_h264(self, frame: OutputFrame) -> bytes:
        """One access unit in Annex B (zerolatency: no B-frames, no lookahead, one packet)."""
        height, width = frame.pixels.shape[:2]
        if self._h264 is None:
            ctx = av.CodecContext.create("libx264", "w")
            ctx.width, ctx.height = width, height
            ctx.pix_fmt = "yuv420p"
            rate = Fraction(self.fps).limit_denominator(1001)
            ctx.time_base = 1 / rate
            ctx.framerate = rate
            ctx.gop_size = max(1, round(2 * self.fps))  # a keyframe every 2 s for late joiners
            ctx.options = {"tune": "zerolatency", "preset": "ultrafast", "profile": "baseline"}
            self._h264 = ctx
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.pixels), format="rgb24")
        video.pts = frame.index
        return b"".join(bytes(packet) for packet in self._h264.encode(video))

    def close(self) -> None:
        self._h264 = None  # nothing to flush: every frame's packet was already sent


class Recorder:
    """An MP4 of every frame handed to :meth:`add`, written on one worker thread.

    A failing disk (full, gone, unwritable) stops the recording, not the session: the first
    failure is logged, reported through ``on_failure``, kept in :attr:`failure`, and later
    frames are not written.

    Args:
        path: the MP4 file to write (opened here: ``OSError`` if it cannot be).
        fps: frame rate of the stream.
        max_pending: frames waiting for the writer at most; more are dropped and counted.
        on_failure: called once, on the writer's thread, with a reason safe to show a client.
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        max_pending: int = 64,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        if max_pending <= 0:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        self.path = path
        self.max_pending = max_pending
        self.frames_dropped = 0
        self.failure: str | None = None
        self._on_failure = on_failure
        self._writer = Mp4Writer(path, fps)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="record")
        self._lock = threading.Lock()
        self._pending = 0
        self._closed: concurrent.futures.Future | None = None

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def add(self, frames: list[OutputFrame]) -> None:
        """Queue frames for writing (any thread; never blocks, drops when the disk lags)."""
        with self._lock:
            if self._closed is not None or self.failure is not None:
                return
            for frame in frames:
                if self._pending >= self.max_pending:
                    self.frames_dropped += 1
                    continue
                self._pending += 1
                self._executor.submit(self._write, frame.pixels)

    def close(self) -> concurrent.futures.Future:
        """Finish the file after the queued frames (idempotent); the future resolves when the
        MP4 is complete and playable, or the recording has failed (see :attr:`failure`)."""
        with self._lock:
            if self._closed is None:
                self._closed = self._executor.submit(self._finish)
                self._executor.shutdown(wait=False)
            return self._closed

    def _write(self, pixels: np.ndarray) -> None:
        try:
            if self.failure is None:
                self._writer.write(pixels)
        except Exception as exc:
            self._fail(exc)
        finally:
            with self._lock:
                self._pending -= 1

    def _finish(self) -> None:
        try:
            self._writer.close()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.failure is not None:
            return
        logger.error("recording %s failed; later frames are not written: %r", self.path, exc)
        # the client hears the system's reason, never the server's paths
        self.failure = getattr(exc, "strerror", None) or type(exc).__name__
        if self._on_failure is not None:
            self._on_failure(self.failure)


def decode_input_frame(header: FrameHeader, payload: bytes, max_pixels: int) -> np.ndarray:
    """An understanding session's input frame as uint8 RGB ``[H, W, 3]``.

    Raises:
        ProtocolError: ``frame_too_large`` over ``max_pixels`` (by the frame header, then by
            the size the JPEG or PNG header declares, both before decoding); ``bad_frame`` when
            the payload's size differs from the frame header's, it does not decode, or it is
            H.264, which input frames do not take.
    """
    if header.width * header.height > max_pixels:
        raise ProtocolError(
            "frame_too_large",
            f"{header.width}x{header.height} is over {max_pixels} pixels",
            header.session,
        )
    if header.format is FrameFormat.RAW:
        if header.width <= 0 or header.height <= 0:
            raise ProtocolError(
                "bad_frame", "a raw frame needs its width and height", header.session
            )
        if len(payload) != header.width * header.height * 3:
            raise ProtocolError(
                "bad_frame",
                f"raw {header.width}x{header.height} needs {header.width * header.height * 3} "
                f"bytes, got {len(payload)}",
                header.session,
            )
        return np.frombuffer(payload, dtype=np.uint8).reshape(header.height, header.width, 3)
    if header.format not in (FrameFormat.JPEG, FrameFormat.PNG):
        raise ProtocolError("bad_frame", "input frames are JPEG, PNG or raw RGB", header.session)
    name = header.format.name
    try:
        width, height = (png_size if header.format is FrameFormat.PNG else jpeg_size)(payload)
    except ImageHeaderError as exc:
        raise ProtocolError("bad_frame", f"the {name} payload: {exc}", header.session) from None
    # checked before decoding: a decoder allocates what the file declares
    if width * height > max_pixels:
        raise ProtocolError(
            "frame_too_large",
            f"the {name} payload declares {width}x{height}, over {max_pixels} pixels",
            header.session,
        )
    if (width, height) != (header.width, header.height):
        raise ProtocolError(
            "bad_frame",
            f"the {name} payload is {width}x{height}, the frame header says "
            f"{header.width}x{header.height}",
            header.session,
        )
    image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape[:2] != (height, width):
        raise ProtocolError("bad_frame", f"the {name} payload does not decode", header.session)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class InputLatency:
    """A restyle session's input-to-output latency over its recent frames: each frame's send
    time minus the arrival of the input frame its slot took (``OutputFrame.input_arrival``,
    both ``time.monotonic()``).

    Args:
        window: latencies kept for the percentiles.
    """

    def __init__(self, window: int = 256) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self._latencies: collections.deque[float] = collections.deque(maxlen=window)

    def sent(self, arrival: float | None, now: float) -> None:
        """A frame whose input arrived at ``arrival`` (None: unknown) left at ``now``."""
        if arrival is not None:
            self._latencies.append(now - arrival)

    def percentiles(self) -> dict[str, float] | None:
        """``{"p50": ms, "p95": ms}`` over the recent frames; None before the first."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        last = len(ordered) - 1
        return {
            "p50": round(1000 * ordered[round(0.50 * last)], 1),
            "p95": round(1000 * ordered[round(0.95 * last)], 1),
        }
