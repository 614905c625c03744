"""Generation and commentary on one device: LongLive sessions watched in real time beside N
commentary clients, all on one server over WebSocket.

For each N of ``clients`` (0 is the generation sessions alone, the reference), a fresh engine
with both pipelines and a real server on a loopback port. ``generators`` connections of the
project's client each start a LongLive session at ``size`` with ``realtime: true`` (frames paced
at the pipeline's fps, as a user watches them) and read every frame; once each has its first
frame, N commentary clients join and send their feeds exactly as :mod:`evals.bench.commentary`
does (same pacing, warm-up, measured seconds, caption latency, admission: every session
admitted, the claimed load recorded). Over the measured seconds' wall-clock span:

* frame lateness of the generation sessions (:class:`evals.observed.FrameLateness`, the soak's
  measure: how much later than its predecessor plus the nominal interval a frame arrives;
  p50 / p99 / max over every frame of every generation session), and the frames/s each got;
* the commentary clients' caption latency, p50 / p95, and the seconds left uncaptioned.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from framestream.clients.client import GenerationSession, StreamClient
from framestream.evals.bench.commentary import (
    LEAD_SECONDS,
    SERVED,
    CaptionTimes,
    FeedPlan,
    add_caption_figures,
    commentators,
    feed_frames,
    serving,
    streaming_vlm_for,
    time_captions,
)
from framestream.evals.bench.console import progress
from framestream.evals.bench.generation import PROMPTS
from framestream.evals.bench.loaders import ModelShelf, release_memory
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.service import longlive_for
from framestream.evals.observed import FrameLateness, percentiles_ms
from framestream.stream.engine import Pipeline

__all__ = ["MixedSettings", "run_mixed"]

_FIRST_FRAME_SECONDS = 120.0  # a generation session's first frame, at most


@dataclass(frozen=True)
class MixedSettings:
    clients: tuple[int, ...]  # commentary clients beside the generation sessions; 0: none
    generators: int  # LongLive sessions, realtime
    seconds: int  # video-seconds measured
    warmup: int  # video-seconds of feed before the measurement
    size: tuple[int, int]  # (height, width) of the generated video

    def __post_init__(self) -> None:
        if not self.clients or min(self.clients) < 0:
            raise ValueError(f"need client counts >= 0: {self.clients}")
        if self.generators not in (1, 2):
            raise ValueError(f"generators must be 1 or 2, got {self.generators}")
        if self.seconds < 1 or self.warmup < 0:
            raise ValueError(f"need seconds >= 1 and warmup >= 0: {self}")


@dataclass(frozen=True)
class _Watched:
    """What the generation sessions' viewers saw over the measured span."""

    lateness_seconds: list[float]  # every frame's, all sessions
    fps: list[float]  # frames/s each session got


def run_mixed(shelf: ModelShelf, settings: MixedSettings) -> Iterator[tuple[str, Workload]]:
    from framestream.stream.service import warm_up

    counts = sorted(set(settings.clients))
    pipelines: dict[str, Pipeline] = {
        "longlive": longlive_for(shelf.wan, settings.generators, settings.size)
    }
    if counts[-1]:
        pipelines["streaming_vlm"] = streaming_vlm_for(shelf.vlm, counts[-1])
    warm_up(pipelines)  # as a server's load does: graphs, a timed step of each
    frames = feed_frames(shelf.vlm_frame)
    fps = pipelines["longlive"].config.fps
    variant = Variant(
        f"{settings.generators} realtime LongLive session(s) beside commentary sessions, one "
        "server over a loopback WebSocket, the project's client; every session admitted"
    )
    watched: dict[int, _Watched] = {}
    captioned: dict[int, float] = {}  # commentary clients -> caption latency p95
    try:
        for n in progress(counts, "mixed: commentary clients"):
            seen, times, load = asyncio.run(_mixed_run(pipelines, n, frames, settings))
            watched[n] = seen
            _add_generation_figures(variant, n, seen, fps)
            if n and (spread := add_caption_figures(variant, n, times)) is not None:
                captioned[n] = spread[95]
            label = f"{n} commentary clients: device share all claim by calibration"
            variant.add_figure(f"claimed_load_{n}", load, "ratio", label)
    finally:
        del pipelines
        release_memory(shelf.target.device)
    for key, label in (("p50", "frame lateness, p50"), ("p99", "frame lateness, p99")):
        variant.series[f"lateness_ms_{key}_by_clients"] = Series(
            label,
            "ms",
            "commentary clients",
            counts,
            [percentiles_ms(watched[n].lateness_seconds)[key] for n in counts],
        )
    if captioned:
        variant.series["caption_ms_p95_by_clients"] = Series(
            "caption latency per video-second, p95",
            "ms",
            "commentary clients",
            list(captioned),
            list(captioned.values()),
        )
    height, width = settings.size
    config = {
        "preset": shelf.target.preset,
        "pipelines": "longlive,streaming_vlm",
        "size": f"{width}x{height}",
        "frame": "{1}x{0}".format(*shelf.vlm_frame),
        "fps": fps,
        **{k: v for k, v in asdict(settings).items() if k != "size"},
    }
    title = (
        f"LongLive x{settings.generators} beside commentary, one server "
        f"({shelf.target.preset}, {width}x{height})"
    )
    yield "mixed_load", Workload(title, config, {SERVED: variant}, SERVED)


def _add_generation_figures(variant: Variant, n: int, seen: _Watched, fps: float) -> None:
    if not seen.lateness_seconds:
        raise RuntimeError(f"mixed load, {n} commentary clients: no generated frame was timed")
    for key, ms in percentiles_ms(seen.lateness_seconds).items():
        label = f"{n} commentary clients: generated frame lateness, {key}"
        variant.add_figure(f"lateness_ms_{key}_{n}", ms, "ms", label)
    label = f"{n} commentary clients: frames/s each generation session got (paced at {fps:g})"
    variant.add_figure(f"generation_fps_{n}", float(np.mean(seen.fps)), "fps", label)


async def _mixed_run(
    pipelines: dict[str, Pipeline],
    n: int,
    frames: Sequence[np.ndarray],
    settings: MixedSettings,
) -> tuple[_Watched, list[CaptionTimes], float]:
    """The generation sessions' frames and ``n`` commentary clients' captions on a fresh
    server, and the load all the sessions claim."""
    loop = asyncio.get_running_loop()
    async with (
        serving(pipelines, settings.generators + n) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        viewers = []
        for i in range(settings.generators):
            client = await stack.enter_async_context(StreamClient.connect(server.url))
            height, width = settings.size
            session = await client.generate(
                PROMPTS[i % len(PROMPTS)], seed=i, height=height, width=width, realtime=True
            )
            viewers.append(_Viewer(session))
        readers = [asyncio.create_task(v.watch()) for v in viewers]
        try:
            async with asyncio.timeout(_FIRST_FRAME_SECONDS):
                await asyncio.gather(*(v.first_frame.wait() for v in viewers))
            async with commentators(server.url, n) as sessions:
                load = server.engine.stats().load
                plan = FeedPlan(loop.time() + LEAD_SECONDS, settings.warmup, settings.seconds)
                for viewer in viewers:
                    viewer.window = plan.window
                times = await asyncio.gather(*(time_captions(s, frames, plan) for s in sessions))
                await asyncio.sleep(max(0.0, plan.window[1] - loop.time()))
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    span = plan.window[1] - plan.window[0]
    lateness = [s for v in viewers for s in v.lateness.seconds]
    return _Watched(lateness, [v.frames / span for v in viewers]), list(times), load


class _Viewer:
    """Reads a generation session's frames as a player would, timing those in ``window``."""

    def __init__(self, session: GenerationSession) -> None:
        self.session = session
        self.first_frame = asyncio.Event()
        self.window = (math.inf, math.inf)  # loop time; set once the feeds' plan is known
        self.lateness = FrameLateness(session.fps)
        self.frames = 0

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        async for frame in self.session.frames():
            now = loop.time()
            self.first_frame.set()
            if self.window[0] <= now <= self.window[1]:
                self.lateness.note(frame.index, now)
                self.frames += 1
