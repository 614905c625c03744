"""Generate a video from a timeline of prompts through a running server: ``stream timeline``.

One generation session is driven from a schedule file: it starts with the first prompt, sends
a ``prompt.update`` for each later one ahead of time with the frame it starts at
(``at_frame``), writes every frame it receives to an MP4 (libx264 at the session's fps) and
stops after the schedule's length::

    schedule ─ parse + validate ─> session.start(prompt 0) ─> frames ─> MP4 (writer thread)
                                   prompt.update(prompt k, at_frame=S_k), sent ahead
                                   prompt.applied {frame} <── the chunk starting at or after S_k
    end: stop, then VIDEO.timeline.json (prompts, requested and applied frames, frame count)

Schedules are JSON or JSONL, ours or LongLive's (with its latent switch indices); parsing and
validation live in :mod:`clients.schedule`, whose names stay importable from here.

When a switch lands: prompt ``k`` should start at frame ``S_k = ceil(t_k * fps)`` (or the
converted LongLive frame). The schedule is known ahead, so its ``prompt.update`` goes out with
``at_frame: S_k`` before the stream gets there (at most ``_MAX_SWITCHES_AHEAD`` wait on the
server at once), and the server applies it at the first chunk that starts at or after ``S_k``,
whatever the pacing and however slowly this client reads: exactly at ``S_k`` when that is a
chunk boundary (LongLive's and Rolling Forcing's chunks start at frames 0, 9, 21, 33, ...: a
first chunk of 9 frames, then 12), else at the next boundary, less than a chunk later. The
sidecar records the asked and the applied frame; a switch applied after the video's end is
reported.

Frames the server or this client dropped (index gaps, with ``--realtime`` and a slow reader)
are filled with the previous frame so that the MP4 keeps its timing; they are counted as
``frames_missing``. Exit codes: 0 done, 1 a server or connection error (``server error CODE:
message`` on stderr), 2 an invalid schedule or argument, 130 interrupted (Ctrl-C; the MP4 and
sidecar of what came so far are still written, a second Ctrl-C quits at once).

Use it as ``stream timeline ...`` or ``python -m framestream.clients.timeline ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm
from websockets.exceptions import WebSocketException

from framestream.clients.client import (
    ClientError,
    Frame,
    GenerationSession,
    ServerError,
    StreamClient,
)
from framestream.clients.interrupt import first_interrupt
from framestream.clients.schedule import (
    LONGLIVE_FPS,
    LONGLIVE_SEGMENT_LATENTS,
    PromptEntry,
    ScheduleError,
    Timeline,
    _check_length,
    latent_to_video_frame,
    load_timeline,
    parse_frame_indices,
    parse_timeline,
)
from framestream.clients.schedule import MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from framestream.clients.schedule import MAX_TRANSITION_CHUNKS as MAX_TRANSITION_CHUNKS
from framestream.clients.tool import add_server_arguments, tool_main
from framestream.clients.video import Mp4Writer

__all__ = [
    "LONGLIVE_FPS",
    "LONGLIVE_SEGMENT_LATENTS",
    "PromptEntry",
    "ScheduleError",
    "Timeline",
    "add_timeline_arguments",
    "latent_to_video_frame",
    "load_timeline",
    "main",
    "parse_frame_indices",
    "parse_size",
    "parse_timeline",
    "run_timeline",
    "sidecar_path",
]

_MAX_QUEUED_FRAMES = 1024  # encoded frames the client keeps for a slow writer (64 s at 16 fps)
_MAX_PENDING_WRITES = 32  # decoded frames waiting for the MP4 encoder
# switches sent ahead and not yet applied: under the server's max_pending_switches default
_MAX_SWITCHES_AHEAD = 16


# -- arguments -------------------------------------------------------------------------------


def parse_size(value: str) -> tuple[int, int]:
    """``"480x832"`` -> ``(480, 832)`` (height, width; positive multiples of 16)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 480x832, got {value!r}")
    height, width = int(match[1]), int(match[2])
    if not height or not width or height % 16 or width % 16:
        raise argparse.ArgumentTypeError(
            f"height and width must be positive multiples of 16, got {value!r}"
        )
    return height, width


def _positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not number > 0 or not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    return parse


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def add_timeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``timeline`` command's arguments to ``parser`` (run it with
    :func:`run_timeline`)."""
    parser.add_argument(
        "schedule",
        metavar="SCHEDULE",
        help="a JSON / JSONL prompt schedule, ours or LongLive's ('-' for stdin)",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        metavar="MP4",
        help="the video to write (default: SCHEDULE's name with .mp4, in the current folder); "
        "the sidecar goes next to it as NAME.timeline.json",
    )
    add_server_arguments(parser)
    video = parser.add_argument_group("video")
    video.add_argument(
        "--pipeline", help="generation pipeline (default: the schedule's, else longlive)"
    )
    video.add_argument(
        "--seed", type=_non_negative_int, help="noise seed (default: the schedule's, else 0)"
    )
    video.add_argument(
        "--seconds",
        type=_positive(float),
        help="length of the video (default: the schedule's; required when it has none)",
    )
    video.add_argument(
        "--size",
        type=parse_size,
        metavar="HxW",
        help="frame size, e.g. 480x832 (default: the server's preset)",
    )
    video.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="have the server pace frames at the video's fps (default: off, as fast as it "
        "generates)",
    )
    video.add_argument(
        "--format",
        choices=["jpeg", "png", "raw", "h264"],
        default="jpeg",
        help="how frames travel from the server (default jpeg)",
    )
    video.add_argument(
        "--quality", type=int, default=95, help="JPEG / H.264 transport quality (default 95)"
    )
    video.add_argument(
        "--crf", type=int, default=18, help="x264 quality of the MP4, lower is better (default 18)"
    )
    longlive = parser.add_argument_group('LongLive\'s format ({"prompts": [p0, p1, ...]})')
    longlive.add_argument(
        "--switch-frame-indices",
        type=parse_frame_indices,
        metavar="L1,L2,...",
        help="latent frames where prompts 1..N-1 start, as LongLive's config "
        f"(default: every {LONGLIVE_SEGMENT_LATENTS}); latent L starts at video frame "
        "1 + 4*(L-1)",
    )
    longlive.add_argument(
        "--num-output-frames",
        type=_positive(int),
        metavar="LATENTS",
        help=f"video length in latent frames (default: the last index + "
        f"{LONGLIVE_SEGMENT_LATENTS}); N latents make 4*N-3 video frames",
    )
    longlive.add_argument(
        "--line",
        type=_positive(int),
        metavar="N",
        help="the schedule on line N of a file of several (1-based; default 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=60.0,
        help="seconds to wait for the session, a frame or a switch (default 60)",
    )


# -- outputs ---------------------------------------------------------------------------------


def sidecar_path(video: Path) -> Path:
    """``out/video.mp4`` -> ``out/video.timeline.json``."""
    return video.with_name(f"{video.stem if video.suffix else video.name}.timeline.json")


def _default_out(schedule: str, timeline: Timeline) -> Path:
    stem = "timeline" if schedule == "-" else Path(schedule).stem
    return Path(f"{stem}-{timeline.line}.mp4" if timeline.line is not None else f"{stem}.mp4")


# -- the run ---------------------------------------------------------------------------------


class _Recorder:
    """One run on an open session: receives frames, switches prompts, writes the MP4."""

    def __init__(
        self,
        args: argparse.Namespace,
        session: GenerationSession,
        timeline: Timeline,
        starts: list[int],
        total: int,
        out: Path,
    ) -> None:
        self.args = args
        self.session = session
        self.timeline = timeline
        self.starts = starts  # requested first frame of each prompt
        self.total = total  # frames to write
        self.out = out
        self.applied: list[int | None] = [0] + [None] * (len(starts) - 1)
        self.written = 0  # frames received or filled in, in order
        self.missing = 0  # of which filled in (dropped on the way)
        self.failed: str | None = None
        self.interrupted = asyncio.Event()
        self.pending: asyncio.Queue[np.ndarray | None] = asyncio.Queue(_MAX_PENDING_WRITES)
        self.writer = Mp4Writer(out, session.fps, args.crf)
        self.bar: Any = None

    def note(self, message: str) -> None:
        tqdm.write(f"stream timeline: {message}", file=sys.stderr)

    async def run(self) -> int:
        self.bar = tqdm(
            total=self.total,
            unit="frame",
            desc="timeline",
            disable=self.args.no_progress,
            file=sys.stderr,
        )
        writer = asyncio.create_task(self.write(), name="timeline-writer")
        switcher = asyncio.create_task(self.switch(), name="timeline-switcher")
        try:
            await self.receive()
            if self.failed is None and not self.interrupted.is_set():
                try:
                    await asyncio.wait_for(asyncio.shield(switcher), self.args.timeout)
                except TimeoutError:
                    timeout = self.args.timeout
                    raise TimeoutError(f"a switch was not applied within {timeout:g} s") from None
        except (ClientError, TimeoutError, WebSocketException) as exc:
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(ClientError, TimeoutError, WebSocketException, OSError):
                await self.session.stop(timeout=self.args.timeout)
            switcher.cancel()
            await asyncio.gather(switcher, return_exceptions=True)
            await self.pending.put(None)
            await writer
            self.bar.close()
        self.report()
        if self.failed is not None:
            print(f"stream timeline: {self.failed}", file=sys.stderr)
            return 1
        return 130 if self.interrupted.is_set() else 0

    async def receive(self) -> None:
        """Read frames until ``total`` are written."""
        frames = self.session.frames()
        previous: np.ndarray | None = None
        try:
            while self.written < self.total:
                if self.failed is not None or self.interrupted.is_set():
                    return
                try:
                    frame: Frame = await asyncio.wait_for(anext(frames), self.args.timeout)
                except StopAsyncIteration:
                    self.failed = self.ended_early()
                    return
                except TimeoutError:
                    raise TimeoutError(f"no frame for {self.args.timeout:g} s") from None
                if frame.index < self.written:
                    continue
                while self.written < min(frame.index, self.total):  # a gap: repeat the last
                    await self.put(previous if previous is not None else frame.pixels)
                    self.missing += 1
                if self.written < self.total:
                    await self.put(frame.pixels)
                previous = frame.pixels
        finally:
            await frames.aclose()

    async def put(self, pixels: np.ndarray) -> None:
        await self.pending.put(pixels)
        self.written += 1
        self.bar.update(1)

    async def write(self) -> None:
        try:
            while (pixels := await self.pending.get()) is not None:
                await asyncio.to_thread(self.writer.write, pixels)
        except (OSError, av.FFmpegError, ValueError) as exc:
            self.failed = self.failed or f"cannot write {self.out}: {exc}"
            while await self.pending.get() is not None:  # unblock receive() until it ends
                pass
        try:
            await asyncio.to_thread(self.writer.close)
        except (OSError, av.FFmpegError, ValueError) as exc:
            self.failed = self.failed or f"cannot write {self.out}: {exc}"

    async def switch(self) -> None:
        """Send the switches ahead, each with its start frame (``at_frame``) and at most
        ``_MAX_SWITCHES_AHEAD`` waiting on the server at once, and note where each landed."""
        waiting: collections.deque[tuple[int, asyncio.Task]] = collections.deque()
        try:
            for k in range(1, len(self.starts)):
                if len(waiting) == _MAX_SWITCHES_AHEAD:
                    await self.landed(*waiting.popleft())
                entry = self.timeline.prompts[k]
                update = self.session.switch_prompt(
                    entry.prompt, entry.transition_chunks, at_frame=self.starts[k]
                )
                # tasks start, and so send, in the order they are made: the server applies them
                # in that order, and the session pairs its prompt.applied replies in that order
                waiting.append((k, asyncio.create_task(update, name=f"timeline-switch-{k}")))
            while waiting:
                await self.landed(*waiting.popleft())
        except (ClientError, WebSocketException) as exc:
            if isinstance(exc, ServerError):
                self.failed = self.failed or f"server error {exc.code}: {exc.message}"
            else:
                self.failed = self.failed or f"a prompt was not applied: {exc}"
        finally:
            for _, task in waiting:
                task.cancel()
            await asyncio.gather(*(task for _, task in waiting), return_exceptions=True)

    async def landed(self, k: int, update: asyncio.Task) -> None:
        """Wait for switch ``k`` to be applied and note where."""
        applied = await update
        assert applied is not None
        frame = int(applied["frame"])
        self.applied[k] = frame
        entry = self.timeline.prompts[k]
        self.note(f"prompt {k} from frame {frame} (asked for {self.starts[k]}): {entry.prompt}")
        if frame >= self.total:
            self.note(f"prompt {k} came after the video's end (frame {self.total})")

    def ended_early(self) -> str:
        """What to say when the session ended before the video was complete."""
        while not self.session.events.empty():
            event = self.session.events.get_nowait()
            if event.get("type") == "error":
                return f"server error {event.get('code')}: {event.get('message')}"
        reason = self.session.ended_reason
        detail = f": {self.session.ended_message}" if self.session.ended_message else ""
        return f"the session ended ({reason}{detail}) after {self.written} of {self.total} frames"

    def report(self) -> None:
        """Write the sidecar next to the MP4."""
        prompts = []
        for k, entry in enumerate(self.timeline.prompts):
            item: dict[str, Any] = {
                "prompt": entry.prompt,
                "t": entry.t,
                "transition_chunks": entry.transition_chunks,
                "requested_frame": self.starts[k],
                "applied_frame": self.applied[k],
            }
            if entry.latent_frame is not None:
                item["latent_frame"] = entry.latent_frame
            prompts.append(item)
        sidecar = {
            "video": self.out.name,
            "schedule": self.args.schedule,
            "format": self.timeline.kind,
            "line": self.timeline.line,
            "pipeline": self.session.pipeline,
            "seed": self.args.seed,
            "fps": self.session.fps,
            "width": self.session.width,
            "height": self.session.height,
            "realtime": bool(self.args.realtime),
            "seconds": self.writer.frames / self.session.fps,
            "frames": self.writer.frames,
            "frames_missing": self.missing,
            "complete": self.writer.frames == self.total,
            "prompts": prompts,
        }
        path = sidecar_path(self.out)
        try:
            path.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", "utf-8")
        except OSError as exc:
            self.failed = self.failed or f"cannot write {path}: {exc}"
        if self.missing:
            self.note(f"{self.missing} dropped frame(s) were filled with the previous one")


def _plan(timeline: Timeline, fps: float, seconds: float | None) -> tuple[list[int], int]:
    """The first frame of each prompt and the frame count at ``fps``.

    Raises:
        ScheduleError: two prompts start at the same frame, or one at or after the end.
    """
    if seconds is not None:
        total = max(1, round(seconds * fps))
    elif timeline.frames is not None:
        total = timeline.frames
    else:
        assert timeline.seconds is not None
        total = max(1, round(timeline.seconds * fps))
    starts = [entry.start_frame(fps) for entry in timeline.prompts]
    for k in range(1, len(starts)):
        if starts[k] <= starts[k - 1]:
            raise ScheduleError(
                f"prompts {k - 1} and {k} both start at frame {starts[k]} at {fps:g} fps"
            )
    if starts[-1] >= total:
        raise ScheduleError(
            f"prompt {len(starts) - 1} starts at frame {starts[-1]}, at or after the end of the "
            f"video ({total} frames at {fps:g} fps)"
        )
    return starts, total


async def run_timeline(args: argparse.Namespace) -> int:
    """Run the ``timeline`` command (arguments from :func:`add_timeline_arguments`); returns the
    exit code: 0 done, 1 a server or connection error, 2 an invalid schedule, 130 interrupted.
    Messages go to stderr."""
    try:
        timeline = load_timeline(
            args.schedule,
            line=args.line,
            switch_frame_indices=args.switch_frame_indices,
            num_output_frames=args.num_output_frames,
        )
        if args.seconds is None and timeline.seconds is None:
            raise ScheduleError(f"{args.schedule}: the schedule has no 'seconds': pass --seconds")
        if args.seconds is not None and timeline.frames is None:
            _check_length(timeline.prompts, args.seconds, args.schedule)
    except ScheduleError as exc:
        print(f"stream timeline: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.quality <= 100 or not 0 <= args.crf <= 51:
        print("stream timeline: --quality must be 1..100 and --crf 0..51", file=sys.stderr)
        return 2
    args.pipeline = args.pipeline or timeline.pipeline or "longlive"
    args.seed = args.seed if args.seed is not None else (timeline.seed or 0)
    out = args.out or _default_out(args.schedule, timeline)
    if not out.parent.is_dir():
        print(f"stream timeline: {out.parent} is not a folder", file=sys.stderr)
        return 2
    height, width = args.size or (None, None)
    try:
        async with StreamClient.connect(
            args.url,
            token=args.token,
            open_timeout=args.timeout,
            max_queued_frames=_MAX_QUEUED_FRAMES,
        ) as client:
            session = await client.generate(
                timeline.prompts[0].prompt,
                pipeline=args.pipeline,
                seed=args.seed,
                height=height,
                width=width,
                format=args.format,
                quality=args.quality,
                realtime=args.realtime,
                timeout=args.timeout,
            )
            async with session:  # stops it on the way out
                try:
                    starts, total = _plan(timeline, session.fps, args.seconds)
                except ScheduleError as exc:
                    print(f"stream timeline: {exc}", file=sys.stderr)
                    return 2
                recorder = _Recorder(args, session, timeline, starts, total, out)
                # the first Ctrl-C ends the video early (still written); a second one quits
                with first_interrupt(lambda: _on_interrupt(recorder)):
                    return await recorder.run()
    except ServerError as exc:
        print(f"stream timeline: server error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (ClientError, OSError, TimeoutError, WebSocketException, ValueError) as exc:
        print(f"stream timeline: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _on_interrupt(recorder: _Recorder) -> None:
    recorder.note("stopping early (Ctrl-C again to quit)")
    recorder.interrupted.set()


def main(argv: list[str] | None = None) -> int:
    return tool_main(
        "python -m framestream.clients.timeline",
        "Generate a video from a timeline of prompts through a streaming server, "
        "and write it as an MP4 with a JSON sidecar of when each prompt took effect.",
        add_timeline_arguments,
        run_timeline,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
