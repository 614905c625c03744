"""Restyle a video file, a network stream, a camera or the toy-world feed: ``stream restyle``.

Frames are read from the source (the same sources as ``stream caption``), sent to a restyle
session at the session's frame rate, and the restyled frames written to an MP4 as they come,
alone or beside the input frame each one restyles (``--side-by-side``)::

    source ─ decode (thread) ─┬─ RestyleSession.feed: newest frame of each slot ─> server
                              └─ kept until its slot is written (--side-by-side)
    server ─ restyled frame i (input slot i) ─ [input slot i | frame i] ─> Mp4Writer (fps)

Pacing: a file (and the toy-world feed, which the server renders as a file) is sent as fast as
the server restyles it, at most ``--max-lead`` seconds ahead of the frames received, and
restyled in the background (``realtime: false``: nothing is dropped, a slow disk only slows
it); a camera or a network stream is live: sent as it comes, restyled in real time (the server
skips the oldest input when it falls behind, and frames the writer cannot take are dropped,
oldest first; a skipped or dropped frame is written as the frame before it, so the video keeps
its timing).

At the end of the source the tool waits for the frames of its last slot (at most ``--timeout``
seconds), stops the session and exits with 0; a server or source error exits with 1, a bad
argument (found before connecting) with 2.

Use it as ``stream restyle ...`` or ``python -m framestream.clients.restyle ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from websockets.exceptions import WebSocketException

from framestream.clients.caption import (
    CameraSource,
    VideoSource,
    fit_size,
    in_range,
    is_url,
    positive,
    video_problem,
)
from framestream.clients.client import (
    ClientError,
    Frame,
    RestyleSession,
    ServerError,
    SessionEnded,
    StreamClient,
)
from framestream.clients.interrupt import first_interrupt
from framestream.clients.restyle_session import DEFAULT_STRENGTH
from framestream.clients.tool import add_server_arguments, tool_main
from framestream.clients.video import Mp4Writer
from framestream.clients.wire import input_frame_pixels

__all__ = ["add_restyle_arguments", "centre_crop", "main", "run_restyle", "toy_feed_url"]

DEFAULT_TOY_SECONDS = 10
# input frames kept for --side-by-side while their slot's output has not come (a live source)
_MAX_KEPT_SECONDS = 30


# -- arguments -----------------------------------------------------------------------------


def add_restyle_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``restyle`` command's arguments to ``parser`` (run it with :func:`run_restyle`)."""
    source = parser.add_argument_group("source (one of)").add_mutually_exclusive_group(
        required=True
    )
    source.add_argument(
        "--video", metavar="PATH_OR_URL", help="a video file or a network URL (rtsp://, http://)"
    )
    source.add_argument("--camera", type=int, metavar="INDEX", help="an OpenCV camera index")
    source.add_argument(
        "--toy-feed",
        type=in_range(int, 0, 2**31 - 1),
        metavar="SEED",
        help="the server's toy-world feed of that seed (64x64, 16 fps; /toyworld/feed.mp4)",
    )
    add_server_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the style to restyle the video in")
    parser.add_argument(
        "--strength",
        type=in_range(float, 0, 1, open_low=True),
        default=DEFAULT_STRENGTH,
        help="how much of the input is redrawn, in (0, 1]: 1 ignores it "
        f"(default {DEFAULT_STRENGTH})",
    )
    parser.add_argument("--pipeline", choices=["longlive", "rolling_forcing"], default="longlive")
    parser.add_argument("--seed", type=in_range(int, 0, 2**64 - 1), default=0, help="noise seed")
    parser.add_argument("--height", type=int, help="output pixels, a multiple of 16")
    parser.add_argument("--width", type=int, help="output pixels, a multiple of 16")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="write each input frame (cropped and resized as the server does) left of its "
        "restyled frame",
    )
    feed = parser.add_argument_group("feed")
    feed.add_argument(
        "--format",
        choices=["jpeg", "png", "raw"],
        default="jpeg",
        help="input frame encoding (default jpeg)",
    )
    feed.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    feed.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live: send frames as they come and restyle in real time (default: on for "
        "cameras and network URLs, off for files and the toy-world feed)",
    )
    feed.add_argument(
        "--max-lead",
        type=positive(float),
        default=1.0,
        help="without --realtime: seconds of feed sent ahead of the frames received; more "
        "than a chunk (0.75 s) (default 1)",
    )
    feed.add_argument(
        "--duration",
        type=positive(float),
        help=f"stop the source after SECONDS of feed (the toy-world feed: {DEFAULT_TOY_SECONDS})",
    )
    feed.add_argument(
        "--timeout",
        type=positive(float),
        default=60.0,
        help="seconds to wait for a restyled frame before giving up (default 60)",
    )


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in words naming the flag; None when they hold."""
    if args.quality is not None and not 1 <= args.quality <= 100:
        return f"--quality must be 1..100, got {args.quality}"
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value <= 0 or value % 16):
            return f"--{name} must be a positive multiple of 16, got {value}"
    if not args.prompt.strip() or len(args.prompt) > 2000:
        return "--prompt must be 1..2000 characters, not blank"
    if args.out.suffix.lower() != ".mp4":
        return f"--out must name an .mp4 file, got {str(args.out)!r}"
    if args.video is not None:
        return video_problem(args.video)
    return None


def toy_feed_url(server: str, seed: int, seconds: int, token: str | None = None) -> str:
    """The HTTP URL of the server's toy-world feed, from its WebSocket URL."""
    parts = urllib.parse.urlsplit(server)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    query = {"seed": seed, "seconds": seconds} | ({"token": token} if token else {})
    return urllib.parse.urlunsplit(
        (scheme, parts.netloc, "/toyworld/feed.mp4", urllib.parse.urlencode(query), "")
    )


# -- frames --------------------------------------------------------------------------------


def centre_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frame`` cut to the aspect of ``width`` x ``height`` about its centre, then resized to
    it: what the server does to an input frame before restyling it."""
    rows, cols = frame.shape[:2]
    if cols * height > rows * width:  # too wide: cut the sides
        keep = max(1, round(rows * width / height))
        left = (cols - keep) // 2
        frame = frame[:, left : left + keep]
    else:
        keep = max(1, round(cols * height / width))
        top = (rows - keep) // 2
        frame = frame[top : top + keep]
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


class _Slots:
    """The source frames for ``--side-by-side``: the input of output frame ``i`` is the last
    source frame at or before slot ``i``'s time (``t0 + i / fps``), as the server takes it."""

    def __init__(self, fps: float, max_frames: int) -> None:
        self.fps = fps
        self.t0: float | None = None
        self._frames: collections.deque[tuple[float, np.ndarray]] = collections.deque(
            maxlen=max_frames
        )

    def add(self, timestamp: float, frame: np.ndarray) -> None:
        if self.t0 is None:
            self.t0 = timestamp
        self._frames.append((timestamp, frame))

    def take(self, index: int) -> np.ndarray | None:
        """Slot ``index``'s frame; frames before it are let go (slots come in order)."""
        if self.t0 is None or not self._frames:
            return None
        time_ = self.t0 + index / self.fps + 1e-9
        while len(self._frames) > 1 and self._frames[1][0] <= time_:
            self._frames.popleft()
        return self._frames[0][1]


# -- the run -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Restyler:
    """One run of the tool on an open session: feeds it, writes what comes back."""

    args: argparse.Namespace
    session: RestyleSession
    source: Any  # VideoSource | CameraSource
    live: bool
    writer: Mp4Writer
    max_pixels: int  # input frames are shrunk to at most this many pixels
    written: int = 0  # frames written (the next index to write)
    failed: str | None = None
    last: np.ndarray | None = None  # the frame written last, repeated over gaps
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = asyncio.Event()  # SIGINT or --duration
        rate = float(self.source.rate)
        self.slots = _Slots(self.session.fps, max(1, math.ceil(_MAX_KEPT_SECONDS * rate)))
        self.count: int | None = None  # output frames the source covers, once it has ended
        self.progress = asyncio.Event()  # set at each frame written
        self.receiver_done = asyncio.Event()

    async def run(self) -> int:
        receiver = asyncio.create_task(self.receive(), name="restyle-receiver")
        watcher = asyncio.create_task(self.watch_errors(), name="restyle-errors")
        try:
            self.count = await self.session.feed(
                self.frames(),
                max_lead=None if self.live else self.args.max_lead,
                frame_seconds=float(1 / self.source.rate),
                format=self.args.format,
                quality=self.args.quality,
                timeout=self.args.timeout,
            )
            await self.wait_for_last_frame()
        except (ClientError, TimeoutError, WebSocketException, ValueError) as exc:
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(ClientError, asyncio.TimeoutError, OSError):
                await self.session.stop(timeout=10.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(receiver, 10.0)
            for task in (receiver, watcher):
                task.cancel()
            await asyncio.gather(receiver, watcher, return_exceptions=True)
            await asyncio.to_thread(self.writer.close)
        if self.failed is None and self.session.ended_reason == "error":
            self.failed = f"the session failed: {self.session.ended_message}"
        if self.failed is not None:
            print(f"stream restyle: {self.failed}", file=sys.stderr)
            return 1
        seconds = self.written / self.session.fps
        print(
            f"wrote {self.written} frames ({seconds:.2f} s at {self.session.fps:g} fps) "
            f"to {self.args.out}"
        )
        return 0

    async def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]:
        """The source's frames until it ends, ``--duration`` or Ctrl-C; live, a file's at their
        presentation times."""
        duration = self.args.duration
        wall_start = time.monotonic()
        while not self.stop.is_set() and not self.session.ended:
            item = await asyncio.to_thread(self.source.read)
            if item is None:
                return
            timestamp, frame = item
            if duration is not None and timestamp >= duration:
                return
            if self.live and isinstance(self.source, VideoSource):  # as a live feed would come
                await asyncio.sleep(max(0.0, wall_start + timestamp - time.monotonic()))
            if self.args.side_by_side:
                self.slots.add(timestamp, frame)
            yield timestamp, _downscale(frame, self.max_pixels)

    async def wait_for_last_frame(self) -> None:
        """Until the source's last slot is written; raises when the session ends first or no
        frame comes for ``--timeout`` seconds."""
        assert self.count is not None
        await self.session.wait_received(self.count, self.args.timeout)
        while self.written < self.count and not self.receiver_done.is_set():
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), self.args.timeout)
        if self.written < self.count:
            raise ClientError(f"the session ended ({self.session.ended_reason}) first")

    async def receive(self) -> None:
        try:
            async for frame in self.session.frames():
                if self.count is not None and frame.index >= self.count:
                    continue  # the padding after the source's end
                await asyncio.to_thread(self.write, frame)
                self.progress.set()
        finally:
            self.receiver_done.set()
            self.progress.set()

    def write(self, frame: Frame) -> None:
        """Frame ``frame.index``, after repeating the last one over any gap before it."""
        if frame.index < self.written:
            return
        while self.written < frame.index and self.last is not None:
            self.writer.write(self.last)
            self.written += 1
        picture = frame.pixels
        if self.args.side_by_side:
            height, width = picture.shape[:2]
            source = self.slots.take(frame.index)
            left = np.zeros_like(picture) if source is None else centre_crop(source, width, height)
            picture = np.concatenate([left, picture], axis=1)
        self.writer.write(picture)
        self.last = picture
        self.written = frame.index + 1

    async def watch_errors(self) -> None:
        while True:
            event = await self.session.events.get()
            if event["type"] == "error":
                error = ServerError.from_message(event)
                print(f"stream restyle: server error {error}", file=sys.stderr)


def _downscale(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    height, width = frame.shape[:2]
    size = fit_size(width, height, max_pixels)
    if size == (width, height):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _open_source(args: argparse.Namespace) -> Any:
    if args.camera is not None:
        return CameraSource(args.camera)
    if args.toy_feed is not None:
        seconds = math.ceil(args.duration or DEFAULT_TOY_SECONDS)
        return VideoSource(toy_feed_url(args.url, args.toy_feed, seconds, args.token), 30.0)
    return VideoSource(args.video, args.timeout)


async def run_restyle(args: argparse.Namespace) -> int:
    """Run the ``restyle`` command (arguments from :func:`add_restyle_arguments`); returns the
    exit code: 0 when every frame of the source was restyled and written, 2 for a bad
    argument (found before connecting), 1 on an error (reported on stderr)."""
    problem = argument_problem(args)
    if problem is not None:
        print(f"stream restyle: {problem}", file=sys.stderr)
        return 2
    live = args.realtime
    if args.camera is not None:  # a camera is live whatever is asked
        live = True
    elif live is None:
        live = args.video is not None and is_url(args.video)
    try:
        source = await asyncio.to_thread(_open_source, args)
    except (ClientError, OSError, av.FFmpegError) as exc:
        print(f"stream restyle: cannot open the source: {exc}", file=sys.stderr)
        return 1
    try:
        async with StreamClient.connect(args.url, token=args.token) as client:
            session = await client.restyle(
                None,
                args.prompt,
                strength=args.strength,
                pipeline=args.pipeline,
                seed=args.seed,
                height=args.height,
                width=args.width,
                realtime=live,
                timeout=args.timeout,
            )
            max_pixels = input_frame_pixels(client.limits, args.format)
            writer = Mp4Writer(args.out, session.fps)
            restyler = _Restyler(args, session, source, live, writer, max_pixels)
            # the first Ctrl-C ends the feed (what was sent is still restyled); a second quits
            with first_interrupt(lambda: _on_interrupt(restyler.stop)):
                return await restyler.run()
    except ServerError as exc:
        print(f"stream restyle: server error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (ClientError, SessionEnded, OSError, TimeoutError, WebSocketException) as exc:
        print(f"stream restyle: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await asyncio.to_thread(source.close)


def _on_interrupt(stop: asyncio.Event) -> None:
    print("stream restyle: stopping the feed (Ctrl-C again to quit)", file=sys.stderr)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    return tool_main(
        "python -m framestream.clients.restyle",
        "Restyle a video file, network stream, camera or the toy-world feed "
        "through a streaming generation server, to MP4.",
        add_restyle_arguments,
        run_restyle,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
