"""Live commentary on a video file, a network stream or a camera: ``stream caption``.

Frames are read from the source, sampled at the server's rate, downscaled and sent to an
understanding session; its captions (one a second) are printed as they arrive and, on request,
written as WebVTT / SubRip subtitles or under a copy of the video, scaled up to be read (to watch
them live over the video, use the browser page's Watch tab: the OpenCV here is the headless
build)::

    source ─ decode ─┬─ sampler (newest frame of each 1/fps slot) ─ downscale ─ send_frame ─> server
    (thread)         └─ --out-mp4: frames wait for their second's caption, then drawn + encoded
    server ─ caption ─> print "[  12.0 -   13.0] text"; kept for --vtt / --srt; --out-mp4

Pacing: with ``--realtime`` (the default for cameras and network URLs) frames are sent at their
presentation times, as a live feed would arrive, and the server keeps the newest seconds when
it falls behind. Without it (the default for files) a file is sent as fast as the server keeps
up, but never more than ``--max-lead`` seconds of feed ahead of the captions received, so that
a long file does not pile up (the server skips seconds it has no room for).

The feed's second ``k`` is understood once a frame at or after ``k + 1`` arrives, so at the end
of the source the last frame is sent once more at the next whole second: a 4 s video gets the
captions of 0-1, 1-2, 2-3 and 3-4 (a 4.3 s one also 4-5, on its last frame). The tool waits
for the caption of that last second (at most ``--timeout`` seconds), stops the session and exits
with 0; a server or source error exits with 1.

Use it as ``stream caption ...`` or ``python -m framestream.clients.caption ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fractions
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np
from websockets.exceptions import WebSocketException

from framestream.clients.client import (
    Caption,
    ClientError,
    ServerError,
    StreamClient,
    UnderstandingSession,
)
from framestream.clients.interrupt import first_interrupt
from framestream.clients.tool import add_server_arguments, tool_main
from framestream.clients.video import Mp4Writer
from framestream.clients.wire import input_frame_pixels

__all__ = [
    "MIN_CAPTIONED_WIDTH",
    "CameraSource",
    "CaptionLayout",
    "Question",
    "VideoSource",
    "add_caption_arguments",
    "caption_frame",
    "fit_size",
    "format_timestamp",
    "in_range",
    "is_url",
    "main",
    "open_source",
    "parse_question",
    "positive",
    "run_caption",
    "subtitle_cues",
    "video_problem",
    "write_srt",
    "write_vtt",
]

DEFAULT_MAX_PIXELS = 768 * 28 * 28  # StreamingVLM's per-frame budget
_MAX_PENDING_OVERLAY_SECONDS = 30  # --out-mp4 frames kept waiting for their caption


# -- arguments -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Question:
    at: float  # seconds of feed; asked before the first frame at or after it is sent
    text: str


def parse_question(value: str) -> Question:
    """``"t=5:what colour is the ball?"`` (also ``t=5s:...``) -> ``Question(5.0, ...)``."""
    spec, sep, text = value.partition(":")
    seconds = spec.strip().removeprefix("t=").removesuffix("s")
    try:
        at = float(seconds)
    except ValueError:
        at = math.nan
    if not sep or not spec.strip().startswith("t=") or not math.isfinite(at) or at < 0:
        raise argparse.ArgumentTypeError(f"expected t=SECONDS:QUESTION, got {value!r}")
    if not text.strip() or len(text) > 2000:
        raise argparse.ArgumentTypeError(f"the question must be 1..2000 characters: {value!r}")
    return Question(at, text.strip())


def in_range(kind: type, low: float, high: float, open_low: bool = False) -> Any:
    """An argparse type: a ``kind`` in ``[low, high]`` (``(low, high]`` with ``open_low``)."""

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        above = number is not None and (number > low if open_low else number >= low)
        if not above or not number <= high:  # NaN fails both
            bounds = f"{'(' if open_low else '['}{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} in {bounds}, got {value!r}")
        return number

    return parse


def positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not number > 0 or not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    return parse


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``caption`` command's arguments to ``parser`` (run it with :func:`run_caption`)."""
    source = parser.add_argument_group("source (one of)").add_mutually_exclusive_group(
        required=True
    )
    source.add_argument(
        "--video", metavar="PATH_OR_URL", help="a video file or a network URL (rtsp://, http://)"
    )
    source.add_argument("--camera", type=int, metavar="INDEX", help="an OpenCV camera index")
    add_server_arguments(parser)
    parser.add_argument("--pipeline", default="streaming_vlm", help="default streaming_vlm")
    parser.add_argument("--instruction", help="what to say about the video (server default)")
    parser.add_argument("--previous-text", help="commentary said before this feed starts")
    sampler = parser.add_argument_group(
        "sampler (default: the server's for its model: the published StreamingVLM sampler, "
        "temperature 0.9, repetition penalty 1.05, top-k 50, seed 0, for a checkpoint; greedy "
        "for the embedded toy model)"
    )
    sampler.add_argument(
        "--temperature", type=in_range(float, 0, 10), help="0 for greedy replies (0..10)"
    )
    sampler.add_argument(
        "--repetition-penalty",
        type=in_range(float, 0, 10, open_low=True),
        help="divides the scores of tokens the session's cache holds (> 0, <= 10; 1 is none)",
    )
    sampler.add_argument(
        "--top-k", type=in_range(int, 1, 1000), help="sample among the best K tokens (1..1000)"
    )
    sampler.add_argument(
        "--seed",
        type=in_range(int, 0, 2**63 - 1),
        help="the session's sampling seed: the same seed and feed give the same captions",
    )
    parser.add_argument(
        "--question",
        action="append",
        default=[],
        type=parse_question,
        metavar="t=SECONDS:QUESTION",
        help="ask QUESTION when the feed reaches SECONDS (repeatable)",
    )
    feed = parser.add_argument_group("feed")
    feed.add_argument(
        "--fps",
        type=positive(float),
        help="frames per second sent (default: the rate the server samples, 2)",
    )
    feed.add_argument(
        "--max-pixels",
        type=positive(int),
        default=DEFAULT_MAX_PIXELS,
        help=f"downscale frames to width*height <= this (default {DEFAULT_MAX_PIXELS})",
    )
    feed.add_argument(
        "--format",
        choices=["jpeg", "png", "raw"],
        default="jpeg",
        help="frame encoding (default jpeg; raw frames are also shrunk to fit one message)",
    )
    feed.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    feed.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send frames at their presentation times (default: on for URLs, off for files; "
        "a camera is always live)",
    )
    feed.add_argument(
        "--max-lead",
        type=positive(float),
        default=2.0,
        help="without --realtime: seconds of feed sent ahead of the captions received (default 2)",
    )
    feed.add_argument(
        "--duration", type=positive(float), help="stop the source after SECONDS of feed"
    )
    feed.add_argument(
        "--timeout",
        type=positive(float),
        default=60.0,
        help="seconds to wait for a caption before giving up (default 60)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--quiet-silence", action="store_true", help="do not print seconds without text"
    )
    out.add_argument("--vtt", type=Path, metavar="PATH", help="write WebVTT subtitles")
    out.add_argument("--srt", type=Path, metavar="PATH", help="write SubRip subtitles")
    out.add_argument(
        "--out-mp4",
        type=Path,
        metavar="PATH",
        help=f"write the video, scaled up to at least {MIN_CAPTIONED_WIDTH} px wide, with each "
        "second's caption in a band below it",
    )


# -- sources -------------------------------------------------------------------------------


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def video_problem(location: str) -> str | None:
    """What keeps a local video file from being read (it is missing, not a video, or has no
    video stream), in words naming it; None when it opens with a video stream, or for a URL
    (a network stream is opened only when the run starts)."""
    if is_url(location):
        return None
    path = Path(location.removeprefix("file://"))
    if not path.exists():
        return f"{location}: no such file"
    if not path.is_file():
        return f"{location}: not a file"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return f"{location} has no video stream"
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return f"{location} is not a readable video ({reason})"
    return None


class VideoSource:
    """Frames of a file or network stream, decoded with PyAV, timed by their presentation
    timestamps (from 0 at the first frame, never going backwards)."""

    def __init__(self, location: str, open_timeout: float) -> None:
        self.container = av.open(location, timeout=(open_timeout, open_timeout))
        if not self.container.streams.video:
            self.container.close()
            raise ClientError(f"{location}: no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.rate = fractions.Fraction(stream.average_rate or stream.guessed_rate or 25)
        self._frames = self.container.decode(stream)
        self._first: float | None = None
        self._index = 0
        self.last_timestamp = -1.0

    def read(self) -> tuple[float, np.ndarray] | None:
        frame = next(self._frames, None)
        if frame is None:
            return None
        time_ = frame.time if frame.time is not None else self._index / self.rate
        if self._first is None:
            self._first = time_
        timestamp = max(float(time_ - self._first), self.last_timestamp, 0.0)
        self._index += 1
        self.last_timestamp = timestamp
        return timestamp, frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self.container.close()


class CameraSource:
    """Frames of an OpenCV camera, timed by a monotonic clock from the first frame."""

    def __init__(self, index: int) -> None:
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise ClientError(f"cannot open camera {index}")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.rate = fractions.Fraction(fps).limit_denominator(1001) if fps > 0 else 30
        self._start: float | None = None
        self.last_timestamp = -1.0

    def read(self) -> tuple[float, np.ndarray] | None:
        ok, bgr = self.capture.read()
        if not ok:
            return None
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self.last_timestamp = now - self._start
        return self.last_timestamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()


# -- sampling and sizing -------------------------------------------------------------------


class _Sampler:
    """Keeps, of each ``1/fps`` slot ``((n - 1)/fps, n/fps]``, only the newest frame: the one
    the server's feed would sample (it takes the last frame at or before each slot time)."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._pending: tuple[float, np.ndarray] | None = None

    def _slot(self, timestamp: float) -> int:
        return math.ceil(timestamp * self.fps - 1e-9)

    def offer(self, timestamp: float, frame: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """Frames to send now (the previous slot's, once a frame of a later slot arrives)."""
        out = []
        if self._pending is not None and self._slot(self._pending[0]) != self._slot(timestamp):
            out.append(self._pending)
        self._pending = (timestamp, frame)
        return out

    def finish(self, end: float) -> list[tuple[float, np.ndarray]]:
        """The last frame, and a copy of it at ``end`` so that the last second completes."""
        if self._pending is None:
            return []
        out = [self._pending]
        if end > self._pending[0]:
            out.append((end, self._pending[1]))
        self._pending = None
        return out


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest (width, height) of the same aspect with ``width * height <= max_pixels``."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new_width = max(1, math.floor(width * scale))
    new_height = max(1, min(math.floor(height * scale), max_pixels // new_width))
    return new_width, new_height


def _downscale(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    height, width = frame.shape[:2]
    size = fit_size(width, height, max_pixels)
    if size == (width, height):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


# -- outputs -------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return " ".join(text.split())


def format_timestamp(seconds: float, separator: str = ".") -> str:
    """``HH:MM:SS.mmm`` (WebVTT; ``separator=","`` for SubRip)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitle_cues(captions: list[Caption]) -> list[tuple[float, float, str]]:
    """(start, end, text) cues: one per caption with text, consecutive captions that repeat the
    same text merged into one cue; silent seconds make no cue."""
    cues: list[tuple[float, float, str]] = []
    for caption in captions:
        text = _clean(caption.text).replace("-->", "->")
        if not text:
            continue
        if cues and cues[-1][2] == text and abs(cues[-1][1] - caption.start) < 1e-6:
            cues[-1] = (cues[-1][0], caption.end, text)
        else:
            cues.append((caption.start, caption.end, text))
    return cues


def write_vtt(path: Path, captions: list[Caption]) -> None:
    lines = ["WEBVTT", ""]
    for start, end, text in subtitle_cues(captions):
        lines += [f"{format_timestamp(start)} --> {format_timestamp(end)}", text, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_srt(path: Path, captions: list[Caption]) -> None:
    lines = []
    for number, (start, end, text) in enumerate(subtitle_cues(captions), 1):
        span = f"{format_timestamp(start, ',')} --> {format_timestamp(end, ',')}"
        lines += [str(number), span, text, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


MIN_CAPTIONED_WIDTH = 512  # --out-mp4 scales a narrower video up to this wide, to be read
_BAND_LINES = 3  # lines of caption the band under the picture holds
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, slots=True)
class CaptionLayout:
    """Where ``--out-mp4`` puts a frame of ``width`` x ``height`` and its caption::

    +---------------------------+
    |  the frame, scaled up by  |  height * factor
    |  a whole factor (nearest) |
    +---------------------------+
    |  caption, wrapped, white  |  band: _BAND_LINES lines on black
    +---------------------------+
            width * factor
    """

    factor: int  # the frame is scaled up by this
    width: int  # of the output, pixels
    picture_height: int  # rows of the scaled frame
    band_height: int  # rows of the caption band below it
    font_scale: float
    thickness: int
    margin: int  # pixels around the text
    line_height: int  # pixels from one baseline to the next

    @classmethod
    def of(cls, width: int, height: int) -> CaptionLayout:
        factor = max(1, math.ceil(MIN_CAPTIONED_WIDTH / width))
        out_width = width * factor
        scale = out_width / 800  # Hershey glyphs read well at this size on such a width
        thickness = max(1, round(scale * 2))
        margin = max(4, out_width // 64)
        (_, text_height), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
        line_height = text_height + baseline + max(2, text_height // 2)
        band = 2 * margin + _BAND_LINES * line_height
        return cls(factor, out_width, height * factor, band, scale, thickness, margin, line_height)

    @property
    def height(self) -> int:
        return self.picture_height + self.band_height


def _wrap(text: str, layout: CaptionLayout) -> list[str]:
    """``text`` in lines that fit the band's width; past its last line, cut with "..."."""
    room = layout.width - 2 * layout.margin

    def fits(line: str) -> bool:
        return cv2.getTextSize(line, _FONT, layout.font_scale, layout.thickness)[0][0] <= room

    lines: list[str] = []
    for word in text.split():
        while not fits(word) and len(word) > 1:  # a word wider than the band: cut it
            cut = len(word) - 1
            while cut > 1 and not fits(word[:cut]):
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > _BAND_LINES:
        lines = lines[:_BAND_LINES]
        last = lines[-1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def caption_frame(frame: np.ndarray, text: str) -> np.ndarray:
    """RGB ``frame`` scaled up by a whole factor to at least :data:`MIN_CAPTIONED_WIDTH`
    pixels wide (nearest neighbour, so small frames stay sharp), above a black band holding
    ``text`` wrapped to its width in white; every frame of a video gets the same size."""
    height, width = frame.shape[:2]
    layout = CaptionLayout.of(width, height)
    out = np.zeros((layout.height, layout.width, 3), np.uint8)
    picture = np.ascontiguousarray(frame)
    if layout.factor > 1:
        picture = cv2.resize(
            picture,
            (layout.width, layout.picture_height),
            interpolation=cv2.INTER_NEAREST,
        )
    out[: layout.picture_height] = picture
    y = layout.picture_height + layout.margin
    for line in _wrap(_clean(text), layout):
        y += layout.line_height
        cv2.putText(
            out,
            line,
            (layout.margin, y - layout.line_height // 4),
            _FONT,
            layout.font_scale,
            (255, 255, 255),
            layout.thickness,
            cv2.LINE_AA,
        )
    return out


# -- the run -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Captioner:
    """One run of the tool on an open session: feeds it, collects its captions."""

    args: argparse.Namespace
    session: UnderstandingSession
    source: Any  # VideoSource | CameraSource
    realtime: bool
    max_pixels: int
    out: TextIO
    captions: list[Caption] = field(default_factory=list)
    last_end: float = 0.0  # end of the newest caption received
    failed: str | None = None

    def __post_init__(self) -> None:
        self.fps = self.args.fps or self.session.fps or 2.0
        self.stop = asyncio.Event()  # SIGINT or --duration
        self.progress = asyncio.Event()  # set at each caption and at the session's end
        self.questions = collections.deque(sorted(self.args.question, key=lambda q: q.at))
        self.writer = Mp4Writer(self.args.out_mp4, self.source.rate) if self.args.out_mp4 else None
        self.overlay: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self.texts: dict[int, str] = {}  # second -> caption text, for --out-mp4
        self.overlay_lock = asyncio.Lock()

    async def run(self) -> int:
        receiver = asyncio.create_task(self.receive(), name="caption-receiver")
        watcher = asyncio.create_task(self.watch_errors(), name="caption-errors")
        try:
            closing = await self.feed()
            if closing is not None and not self.session.ended:
                await self.wait_for(lambda: self.last_end >= closing - 1e-6, "the last caption")
        except (ClientError, TimeoutError, WebSocketException) as exc:
            self.failed = self.failed or str(exc)
        finally:
            with contextlib.suppress(ClientError, asyncio.TimeoutError, OSError):
                await self.session.stop(timeout=10.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(receiver, 10.0)
            watcher.cancel()
            receiver.cancel()
            await asyncio.gather(receiver, watcher, return_exceptions=True)
            await self.flush_overlay(math.inf)
            if self.writer is not None:
                await asyncio.to_thread(self.writer.close)
        if self.args.vtt:
            write_vtt(self.args.vtt, self.captions)
        if self.args.srt:
            write_srt(self.args.srt, self.captions)
        if self.failed is None and self.session.ended_reason == "error":
            self.failed = f"the session failed: {self.session.ended_message}"
        if self.failed is not None:
            print(f"stream caption: {self.failed}", file=sys.stderr)
            return 1
        return 0

    async def feed(self) -> float | None:
        """Send the source; returns the closing timestamp (the last second's end), or None
        when no frame was read."""
        sampler = _Sampler(self.fps)
        duration = self.args.duration
        wall_start = time.monotonic()
        last: float | None = None
        while not self.stop.is_set() and not self.session.ended:
            item = await asyncio.to_thread(self.source.read)
            if item is None:
                break
            timestamp, frame = item
            if duration is not None and timestamp >= duration:
                break
            if self.realtime and isinstance(self.source, VideoSource):
                await asyncio.sleep(max(0.0, wall_start + timestamp - time.monotonic()))
            last = timestamp
            if self.writer is not None:
                await self.add_overlay(timestamp, frame)
            for sample in sampler.offer(timestamp, frame):
                await self.send(*sample)
        if last is None:
            return None
        end = last + float(1 / self.source.rate) if isinstance(self.source, VideoSource) else last
        if duration is not None:
            end = min(end, duration)
        closing = max(1, math.ceil(end - 1e-6))
        for sample in sampler.finish(float(closing)):
            await self.send(*sample)
        for question in self.questions:
            print(f"stream caption: not asked (feed ended first): {question.text}", file=sys.stderr)
        return float(closing)

    async def send(self, timestamp: float, frame: np.ndarray) -> None:
        if not self.realtime:  # keep at most --max-lead seconds ahead of the captions
            lead = max(self.args.max_lead, 1 + 1 / self.fps)  # less could never progress
            await self.wait_for(lambda: timestamp <= self.last_end + lead, "a caption")
        while self.questions and self.questions[0].at <= timestamp:
            await self.session.ask(self.questions.popleft().text)
        pixels = _downscale(frame, self.max_pixels)
        await self.session.send_frame(
            pixels, timestamp, format=self.args.format, quality=self.args.quality
        )

    async def wait_for(self, condition: Any, what: str) -> None:
        """Wait until ``condition()``; raises when no caption came for ``--timeout`` seconds,
        or :class:`ClientError` when the session ends first."""
        while not condition():
            if self.session.ended:
                raise ClientError(f"the session ended ({self.session.ended_reason}) first")
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), self.args.timeout)
            except TimeoutError:
                message = f"no caption for {self.args.timeout:g} s while waiting for {what}"
                raise TimeoutError(message) from None

    async def receive(self) -> None:
        try:
            async for caption in self.session.captions():
                self.captions.append(caption)
                self.last_end = max(self.last_end, caption.end)
                text = _clean(caption.text)
                if text or not self.args.quiet_silence:
                    line = f"[{caption.start:6.1f} - {caption.end:6.1f}] {text}"
                    print(line.rstrip(), file=self.out, flush=True)
                if self.writer is not None:
                    self.texts[math.floor(caption.start + 1e-6)] = caption.text
                    await self.flush_overlay(caption.end)
                self.progress.set()
        finally:
            self.progress.set()

    async def watch_errors(self) -> None:
        while True:
            event = await self.session.events.get()
            if event["type"] == "error":
                error = ServerError.from_message(event)
                print(f"stream caption: server error {error}", file=sys.stderr)
            elif event["type"] == "session.ended":
                self.progress.set()

    # -- --out-mp4 --------------------------------------------------------------------------

    async def add_overlay(self, timestamp: float, frame: np.ndarray) -> None:
        self.overlay.append((timestamp, frame))
        oldest_kept = timestamp - _MAX_PENDING_OVERLAY_SECONDS
        if self.overlay[0][0] < oldest_kept:  # the captions lag too far: write without
            await self.flush_overlay(oldest_kept)

    async def flush_overlay(self, until: float) -> None:
        """Draw and encode the waiting frames before ``until`` seconds."""
        if self.writer is None:
            return
        async with self.overlay_lock:
            ready = []
            while self.overlay and self.overlay[0][0] < until - 1e-6:
                timestamp, frame = self.overlay.popleft()
                ready.append(caption_frame(frame, self.texts.get(math.floor(timestamp), "")))
            if ready:
                await asyncio.to_thread(_write_all, self.writer, ready)


def _write_all(writer: Mp4Writer, frames: list[np.ndarray]) -> None:
    for frame in frames:
        writer.write(frame)


def open_source(args: argparse.Namespace) -> Any:
    if args.video is not None:
        return VideoSource(args.video, args.timeout)
    return CameraSource(args.camera)


async def run_caption(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the ``caption`` command (arguments from :func:`add_caption_arguments`); returns the
    exit code: 0 when every caption of the feed arrived, 2 for a bad argument (a video file
    that is missing or unreadable, found before connecting), 1 on an error (reported on
    stderr).

    Captions are printed to ``out`` (default: stdout)."""
    if args.quality is not None and not 1 <= args.quality <= 100:
        print(f"stream caption: --quality must be 1..100, got {args.quality}", file=sys.stderr)
        return 2
    problem = video_problem(args.video) if args.video is not None else None
    if problem is not None:
        print(f"stream caption: {problem}", file=sys.stderr)
        return 2
    try:
        source = await asyncio.to_thread(open_source, args)
    except (ClientError, OSError, av.FFmpegError) as exc:
        where = args.video if args.video is not None else f"camera {args.camera}"
        print(f"stream caption: cannot open {where}: {exc}", file=sys.stderr)
        return 1
    realtime = args.realtime
    if realtime is None or args.camera is not None:  # a camera is live whatever is asked
        realtime = args.camera is not None or is_url(args.video)
    try:
        async with StreamClient.connect(args.url, token=args.token) as client:
            session = await client.understand(
                pipeline=args.pipeline,
                instruction=args.instruction,
                previous_text=args.previous_text,
                temperature=args.temperature,
                repetition_penalty=args.repetition_penalty,
                top_k=args.top_k,
                seed=args.seed,
                timeout=args.timeout,
            )
            max_pixels = input_frame_pixels(client.limits, args.format, args.max_pixels)
            captioner = _Captioner(
                args, session, source, realtime, max_pixels, out=out or sys.stdout
            )
            # the first Ctrl-C ends the feed (its captions still come); a second one quits
            with first_interrupt(lambda: _on_interrupt(captioner.stop)):
                return await captioner.run()
    except ServerError as exc:
        print(f"stream caption: server error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (ClientError, OSError, TimeoutError, WebSocketException) as exc:
        print(f"stream caption: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await asyncio.to_thread(source.close)


def _on_interrupt(stop: asyncio.Event) -> None:
    print("stream caption: stopping the feed (Ctrl-C again to quit)", file=sys.stderr)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    return tool_main(
        "python -m framestream.clients.caption",
        "Live captions of a video file, network stream or camera, from a "
        "streaming understanding server.",
        add_caption_arguments,
        run_caption,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
