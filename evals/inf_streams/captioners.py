"""Running one chunk of a video as a live stream, and collecting its per-second captions.

Two ways, fed the same frames (the same answers too when frames travel losslessly, PNG or raw:
the pipeline decodes greedily):

- :class:`ServerCaptioner`: through the service over WebSocket, with the client library of
  ``clients/`` (one connection and one understanding session per chunk), as a user would;
- :class:`InProcessCaptioner`: on a :class:`~stream.pipelines.streaming_vlm.StreamingVLMPipeline`
  in this process, without a server.

Pacing (``StreamOptions.pace``):

- ``lockstep`` (default): a frame is sent only when the captions are at most ``lead`` seconds
  behind it, so every second is understood, however slow the model: the published protocol,
  where each second is answered in turn;
- ``realtime``: frames are sent at their presentation times, as a camera would; a service that
  falls behind drops the oldest seconds (they count as silent and as ``skipped_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from framestream.clients.caption import fit_size
from framestream.clients.client import ClientError, StreamClient, UnderstandingSession
from framestream.evals.inf_streams.store import ChunkKey
from framestream.evals.inf_streams.video import sample_frames

__all__ = [
    "ChunkCaptions",
    "ChunkJob",
    "InProcessCaptioner",
    "RunFailedError",
    "ServerCaptioner",
    "StreamOptions",
]

Progress = Callable[[int], None]  # called with the number of seconds just captioned


class RunFailedError(Exception):
    """A chunk could not be run (the service refused or failed, a video is unreadable)."""


@dataclass(frozen=True)
class StreamOptions:
    """How frames are fed; every field is recorded with the answers (``run.json``)."""

    fps: int = 2  # frames per second sent (StreamingVLM samples 2)
    pace: Literal["lockstep", "realtime"] = "lockstep"
    lead: float = 2.0  # lockstep: seconds of feed sent ahead of the captions received
    frame_format: Literal["jpeg", "png", "raw"] = "jpeg"
    quality: int = 90  # JPEG
    max_pixels: int = 768 * 28 * 28  # per frame, downscaled on this side (StreamingVLM's cap)
    timeout: float = 120.0  # seconds without a caption before the chunk fails

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.lead <= 0 or self.max_pixels <= 0 or self.timeout <= 0:
            raise ValueError(f"fps, lead, max_pixels and timeout must be positive: {self}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1..100, got {self.quality}")


@dataclass(frozen=True)
class ChunkJob:
    """One chunk to run: which stretch of which file, primed with what."""

    key: ChunkKey
    path: Path  # the video file
    instruction: str | None  # None: the pipeline's default
    previous_text: str  # "" for none


@dataclass
class ChunkCaptions:
    """What one chunk's stream produced; seconds are relative to the chunk's start."""

    texts: dict[int, str] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0


def _downscale(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    height, width = frame.shape[:2]
    size = fit_size(width, height, max_pixels)
    if size == (width, height):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _closes(timestamp: float, fps: int) -> int | None:
    """The feed second a frame at ``timestamp`` completes (the slot at ``k + 1`` closes
    second ``k``), or None."""
    slot = round(timestamp * fps)
    return slot // fps - 1 if slot % fps == 0 and slot > 0 else None


class ServerCaptioner:
    """Runs chunks through a server at ``url`` (``ws://host:port/ws``)."""

    def __init__(
        self,
        url: str,
        options: StreamOptions,
        *,
        token: str | None = None,
        pipeline: str = "streaming_vlm",
    ) -> None:
        self.url = url
        self.options = options
        self.token = token
        self.pipeline = pipeline

    async def caption(self, job: ChunkJob, progress: Progress) -> ChunkCaptions:
        try:
            async with StreamClient.connect(self.url, token=self.token) as client:
                session = await client.understand(
                    pipeline=self.pipeline,
                    instruction=job.instruction,
                    previous_text=job.previous_text or None,
                    timeout=self.options.timeout,
                )
                if session.fps and session.fps != self.options.fps:
                    raise RunFailedError(
                        f"the server samples {session.fps:g} frames a second, the run sends "
                        f"{self.options.fps}: run with --fps {session.fps:g}"
                    )
                max_pixels = self.options.max_pixels
                limit = client.limits.get("max_frame_pixels")
                if limit:
                    max_pixels = min(max_pixels, int(limit))
                if self.options.frame_format == "raw":  # a raw frame must fit one message
                    max_bytes = int(client.limits.get("max_message_bytes") or 1 << 62)
                    max_pixels = min(max_pixels, (max_bytes - 32) // 3)
                return await _ServerStream(self.options, job, session, max_pixels, progress).run()
        except (ClientError, OSError, TimeoutError) as exc:
            raise RunFailedError(f"{job.key.video} {job.key.start}-{job.key.end} s: {exc}") from exc


class _ServerStream:
    """One chunk on one open understanding session."""

    def __init__(
        self,
        options: StreamOptions,
        job: ChunkJob,
        session: UnderstandingSession,
        max_pixels: int,
        progress: Progress,
    ) -> None:
        self.options = options
        self.job = job
        self.session = session
        self.max_pixels = max_pixels
        self.progress = progress
        self.out = ChunkCaptions()
        self.closed_at: dict[int, float] = {}  # feed second -> when its last frame left
        self.captioned_until = 0.0  # end of the newest caption, feed seconds
        self.changed = asyncio.Event()

    async def run(self) -> ChunkCaptions:
        began = time.monotonic()
        receiver = asyncio.create_task(self.receive())
        try:
            await self.feed()
            await self.wait_until(self.job.key.seconds, "the last caption")
        finally:
            with contextlib.suppress(Exception):
                await self.session.stop(timeout=10.0)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
        if self.session.ended_reason == "error":
            raise RunFailedError(f"the session failed: {self.session.ended_message}")
        self.out.wall_seconds = time.monotonic() - began
        return self.out

    async def feed(self) -> None:
        fps = self.options.fps
        frames = sample_frames(self.job.path, self.job.key.start, self.job.key.end, fps)
        lead = max(self.options.lead, 1 + 1 / fps)  # less could never make progress
        began = time.monotonic()
        try:
            while True:
                item = await asyncio.to_thread(next, frames, None)
                if item is None:
                    return
                timestamp, frame = item
                if self.options.pace == "realtime":
                    await asyncio.sleep(max(0.0, began + timestamp - time.monotonic()))
                else:
                    await self.wait_until(timestamp - lead, "a caption")
                pixels = await asyncio.to_thread(_downscale, frame, self.max_pixels)
                await self.session.send_frame(
                    pixels,
                    timestamp,
                    format=self.options.frame_format,
                    quality=self.options.quality,
                )
                closed = _closes(timestamp, fps)
                if closed is not None:
                    self.closed_at[closed] = time.monotonic()
        finally:
            # cancelled while a worker thread decodes: that thread still owns the generator
            with contextlib.suppress(ValueError):
                frames.close()

    async def wait_until(self, feed_seconds: float, what: str) -> None:
        """Wait until the captions reach ``feed_seconds``; fails after ``timeout`` without one."""
        while self.captioned_until < feed_seconds - 1e-6:
            if self.session.ended:
                why = self.session.ended_message or self.session.ended_reason
                raise RunFailedError(f"the session ended before {what}: {why}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), self.options.timeout)
            except TimeoutError:
                raise RunFailedError(
                    f"no caption for {self.options.timeout:g} s while waiting for {what}"
                ) from None

    async def receive(self) -> None:
        try:
            async for caption in self.session.captions():
                second = round(caption.start)
                self.out.texts[second] = caption.text
                self.out.lags.append(caption.lag)
                if second in self.closed_at:
                    self.out.latencies.append(time.monotonic() - self.closed_at.pop(second))
                self.captioned_until = max(self.captioned_until, caption.end)
                self.progress(1)
                self.changed.set()
        finally:
            self.changed.set()


class InProcessCaptioner:
    """Runs chunks on a StreamingVLM pipeline in this process (one at a time)."""

    def __init__(self, pipeline, options: StreamOptions) -> None:
        if pipeline.config.fps != options.fps:
            raise ValueError(
                f"the pipeline samples {pipeline.config.fps} fps, the options say {options.fps}"
            )
        self.pipeline = pipeline
        self.options = options

    async def caption(self, job: ChunkJob, progress: Progress) -> ChunkCaptions:
        stop = threading.Event()  # a cancelled run stops the worker thread at the next frame
        try:
            return await asyncio.to_thread(self._run, job, progress, stop)
        finally:
            stop.set()

    def _run(self, job: ChunkJob, progress: Progress, stop: threading.Event) -> ChunkCaptions:
        from framestream.stream.requests import DEFAULT_INSTRUCTION, UnderstandingRequest

        pipeline, fps = self.pipeline, self.options.fps
        request = UnderstandingRequest(job.instruction or DEFAULT_INSTRUCTION, job.previous_text)
        out = ChunkCaptions()
        began = time.monotonic()
        state = pipeline.open(request)
        frames: Iterator[tuple[float, np.ndarray]] = sample_frames(
            job.path, job.key.start, job.key.end, fps
        )
        try:
            for timestamp, frame in frames:
                if stop.is_set():
                    raise RunFailedError("stopped")
                pipeline.push_frame(state, timestamp, _downscale(frame, self.options.max_pixels))
                closed_at = time.monotonic()
                while pipeline.ready(state):
                    pipeline.prefill(state)
                    caption = None
                    while caption is None:
                        caption = pipeline.decode([state])[0]
                    out.texts[round(caption.start)] = caption.text
                    out.lags.append(caption.lag)
                    out.latencies.append(time.monotonic() - closed_at)
                    progress(1)
        finally:
            frames.close()
            pipeline.close(state)
        out.wall_seconds = time.monotonic() - began
        return out
