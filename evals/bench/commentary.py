"""Commentary through the service: N clients each feeding a live video to a StreamingVLM
session of one server over WebSocket, and how late each second's caption comes.

For each N of ``clients`` (ascending), a fresh engine and a real server on a loopback port,
built as ``stream serve`` builds them (the pipeline warmed up and calibrated, the engine's
limits as shipped except admission: see below). N connections of the project's own client each
open an understanding session (the understanding suite's instruction and 1024 tokens of previous
text) and send a feed paced in real time, as a live camera would: 2 frames a video-second at the
preset's frame size (full size: 1008x560), frame ``j`` at ``start + j / 2`` seconds of wall
time, every client on the same clock (their seconds fall due together, as the understanding
suite's concurrency sweep batches them). The first ``warmup`` seconds are left out; the next
``seconds`` are measured.

A second's caption latency is the time from the frame that completes the second being sent to
its caption arriving. Second ``k`` is understood once a frame at or after ``k + 1`` has arrived
(docs/protocol.md, input frames), so that frame, the first of second ``k + 1``, is when a live
feed's second is over; the latency is then what the server adds, as the understanding suite's
latency of a second is what the pipeline adds. A second whose caption has not come
``CAPTION_WAIT_SECONDS`` after the feed's last frame counts as missing: skipped (the server
keeps the newest 4 seconds of a feed it trails) or that late. N clients
are in real time when p95 < 1 s and none is missing (the understanding suite's rule); the sweep
stops once p95 passes 1.5 s or a caption is missing.

Admission: the bench's engine admits every session it asks for (admission by compute off, as
tests/admission.py does for the tests): the bench measures what happens to N streams, not
whether a server would take them. What the shipped admission would say is recorded beside it:
``claimed_load_N``, the share of the device the N sessions claim by the pipeline's calibration
(a server as shipped refuses a realtime session past 0.9).

The clients share the server's process and event loop, and its CPU cores, as in
:mod:`evals.bench.service`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from framestream.clients.client import StreamClient, UnderstandingSession
from framestream.evals.bench.console import progress
from framestream.evals.bench.loaders import ModelShelf, release_memory
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.timing import percentiles
from framestream.evals.bench.understanding import (
    GIVE_UP_MS,
    INSTRUCTION,
    PREVIOUS_TEXT,
    REAL_TIME_MS,
    pipeline_for,
)
from framestream.evals.bench.variants import OURS, VariantSpec
from framestream.models.qwen_vl import QwenVL
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig, Pipeline
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline
from framestream.stream.server import Server, build_server

__all__ = [
    "CAPTION_WAIT_SECONDS",
    "LEAD_SECONDS",
    "SERVED",
    "CaptionTimes",
    "CommentarySettings",
    "FeedPlan",
    "add_caption_figures",
    "commentators",
    "feed_frames",
    "run_commentary",
    "serving",
    "streaming_vlm_for",
    "time_captions",
]

SERVED = "websocket"
# past the feed's last frame: a server this far behind has skipped seconds anyway (it keeps the
# newest 4 seconds of a feed)
CAPTION_WAIT_SECONDS = 15.0
LEAD_SECONDS = 0.2  # between the last session starting and the feeds' first frame
_DISTINCT_FRAMES = 4  # the feed cycles through these (content changes nothing measured)


@dataclass(frozen=True)
class CommentarySettings:
    clients: tuple[int, ...]  # connections at once, one commentary session each
    seconds: int  # video-seconds measured per client
    warmup: int  # video-seconds each feed runs before it is measured

    def __post_init__(self) -> None:
        if not self.clients or min(self.clients) < 1:
            raise ValueError(f"need client counts >= 1: {self.clients}")
        if self.seconds < 1 or self.warmup < 0:
            raise ValueError(f"need seconds >= 1 and warmup >= 0: {self}")


@dataclass(frozen=True)
class FeedPlan:
    """When the feeds run: frame ``j`` is sent at ``start + j / fps`` (loop time, seconds)."""

    start: float
    warmup: int
    seconds: int

    @property
    def measured(self) -> range:
        """The video-seconds measured."""
        return range(self.warmup, self.warmup + self.seconds)

    @property
    def window(self) -> tuple[float, float]:
        """The wall-clock span of the measured video-seconds (loop time)."""
        return self.start + self.warmup, self.start + self.warmup + self.seconds


@dataclass(frozen=True)
class CaptionTimes:
    """One client's measured seconds: each captioned one's latency, and the uncaptioned."""

    latency_ms: dict[int, float]  # video-second -> ms from its completing frame to its caption
    missing: int


def streaming_vlm_for(model: QwenVL, streams: int) -> StreamingVLMPipeline:
    """The served pipeline (ours, as shipped) with a pool for ``streams`` streams."""
    return pipeline_for(model, VariantSpec(OURS, ""), streams=streams, seconds=0, manager=None)


@contextlib.asynccontextmanager
async def serving(pipelines: dict[str, Pipeline], sessions: int) -> AsyncIterator[Server]:
    """A server on a loopback port over a fresh engine of ``pipelines`` that admits any
    ``sessions`` sessions (admission by compute off; see the module's docstring)."""
    config = EngineConfig(max_sessions=sessions, max_load=1e9, max_step_seconds=1e9)
    engine = Engine(pipelines, config)
    async with build_server(ServerConfig(port=0, max_sessions_per_connection=1), engine) as server:
        yield server


@contextlib.asynccontextmanager
async def commentators(url: str, n: int) -> AsyncIterator[list[UnderstandingSession]]:
    """``n`` connections to ``url``, each with one commentary session started."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(StreamClient.connect(url)) for _ in range(n)]
        sessions = await asyncio.gather(
            *(c.understand(instruction=INSTRUCTION, previous_text=PREVIOUS_TEXT) for c in clients)
        )
        for session in sessions:
            await stack.enter_async_context(session)  # stopped on the way out
        yield list(sessions)


def feed_frames(frame: tuple[int, int]) -> list[np.ndarray]:
    """A few frames of ``frame`` (height, width): random 16-pixel blocks, which keep a full-size
    JPEG far under the server's message limit (random pixels would not)."""
    height, width = frame
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (_DISTINCT_FRAMES, -(-height // 16), -(-width // 16), 3))
    big = blocks.astype(np.uint8).repeat(16, axis=1).repeat(16, axis=2)
    return [np.ascontiguousarray(f[:height, :width]) for f in big]


async def time_captions(
    session: UnderstandingSession, frames: Sequence[np.ndarray], plan: FeedPlan
) -> CaptionTimes:
    """Send ``session`` its feed as ``plan`` paces it, and time the captions of the measured
    seconds."""
    loop = asyncio.get_running_loop()
    rate = round(session.fps)  # frames a video-second, from session.started
    last = plan.measured[-1]
    completed: dict[int, float] = {}  # video-second -> loop time its completing frame was sent
    arrived: dict[int, float] = {}

    async def read() -> None:
        async for caption in session.captions():
            second = round(caption.start)
            arrived[second] = loop.time()
            if second >= last:
                return

    reader = asyncio.create_task(read())
    try:
        for j in range((last + 1) * rate + 1):  # the last frame completes the last second
            await asyncio.sleep(max(0.0, plan.start + j / rate - loop.time()))
            await session.send_frame(frames[j % len(frames)], j / rate)
            if j and j % rate == 0:
                completed[j // rate - 1] = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), CAPTION_WAIT_SECONDS)
    finally:
        reader.cancel()
    latency = {k: 1e3 * (arrived[k] - completed[k]) for k in plan.measured if k in arrived}
    return CaptionTimes(latency, len(plan.measured) - len(latency))


def add_caption_figures(
    variant: Variant, n: int, times: Sequence[CaptionTimes]
) -> dict[int, float] | None:
    """``caption_ms_p50_N``, ``caption_ms_p95_N`` and ``captions_missing_N`` of ``n`` clients'
    ``times``, and the per-second series; returns the percentiles (None: no caption came)."""
    pooled = [ms for t in times for ms in t.latency_ms.values()]
    missing = sum(t.missing for t in times)
    variant.add_figure(
        f"captions_missing_{n}", missing, "seconds", f"{n} clients: measured seconds uncaptioned"
    )
    if not pooled:
        return None
    spread = percentiles(pooled)
    for p in (50, 95):
        label = f"{n} clients: caption latency per video-second, p{p}"
        variant.add_figure(f"caption_ms_p{p}_{n}", spread[p], "ms", label)
    seconds = sorted({k for t in times for k in t.latency_ms})
    worst = [max(t.latency_ms.get(k, 0.0) for t in times) for k in seconds]
    variant.series[f"caption_ms_{n}_clients"] = Series(
        f"caption latency, slowest of {n} clients", "ms", "video-second", seconds, worst
    )
    return spread


def _in_real_time(spread: dict[int, float], missing: int) -> bool:
    return missing == 0 and spread[95] < REAL_TIME_MS


def run_commentary(
    shelf: ModelShelf, settings: CommentarySettings
) -> Iterator[tuple[str, Workload]]:
    from framestream.stream.service import warm_up

    counts = sorted(set(settings.clients))
    pipe = streaming_vlm_for(shelf.vlm, max(counts))
    fps = pipe.config.fps
    warm_up({"streaming_vlm": pipe})  # as a server's load does: graphs, a timed round
    frames = feed_frames(shelf.vlm_frame)
    variant = Variant(
        "commentary sessions over a loopback WebSocket from the project's client, feeds paced "
        "in real time; every session admitted"
    )
    spreads: dict[int, dict[int, float]] = {}
    live: list[int] = []  # client counts in real time
    try:
        for n in progress(counts, "commentary: clients"):
            times, load = asyncio.run(_served_captions(pipe, n, frames, settings))
            spread = add_caption_figures(variant, n, times)
            label = f"{n} clients: device share they claim by calibration (shipped limit 0.9)"
            variant.add_figure(f"claimed_load_{n}", load, "ratio", label)
            missing = sum(t.missing for t in times)
            if spread is None:
                break
            spreads[n] = spread
            if _in_real_time(spread, missing):
                live.append(n)
            if missing or spread[95] > GIVE_UP_MS:
                break
    finally:
        del pipe
        release_memory(shelf.target.device)
    variant.add_figure(
        "real_time_clients",
        max(live, default=0),
        "clients",
        "most clients tried with caption p95 under 1 s and no second uncaptioned",
    )
    done = sorted(spreads)
    for p in (50, 95):
        variant.series[f"caption_ms_p{p}_by_clients"] = Series(
            f"caption latency per video-second, p{p}",
            "ms",
            "clients",
            done,
            [spreads[n][p] for n in done],
        )
    height, width = shelf.vlm_frame
    config = {
        "preset": shelf.target.preset,
        "pipeline": "streaming_vlm",
        "frame": f"{width}x{height}",
        "fps": fps,
        **asdict(settings),
    }
    title = f"StreamingVLM commentary over WebSocket ({shelf.target.preset}, {width}x{height})"
    yield "commentary_websocket", Workload(title, config, {SERVED: variant}, SERVED)


async def _served_captions(
    pipe: StreamingVLMPipeline,
    n: int,
    frames: Sequence[np.ndarray],
    settings: CommentarySettings,
) -> tuple[list[CaptionTimes], float]:
    """``n`` clients' caption times on a fresh server, and the load their sessions claim."""
    async with serving({"streaming_vlm": pipe}, n) as server, commentators(server.url, n) as s:
        load = server.engine.stats().load
        start = asyncio.get_running_loop().time() + LEAD_SECONDS
        plan = FeedPlan(start, settings.warmup, settings.seconds)
        times = await asyncio.gather(*(time_captions(session, frames, plan) for session in s))
    return list(times), load
