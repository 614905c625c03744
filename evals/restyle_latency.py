"""Restyle latency through the service: how long after an input frame is sent its restyled frame
arrives, against issue 27's target of one chunk plus one step.

    python -m framestream.evals.restyle_latency --out evals/results/restyle_latency_cpu_DATE.json
        [--seconds 20] [--pipelines longlive,rolling_forcing] [--strength 0.6] [--preset toyworld]

A real server on a loopback port (:class:`evals.loopback.ServerThread`, its own thread and
event loop, as a separate process would be) serves the embedded models. For each pipeline, one
restyle session (``realtime: true``) is fed the toy-world feed as a live camera gives it: frame
``i`` (stamped ``i / 16``) is captured at ``start + i / 16`` on the wall clock and handed to
:meth:`StreamClient.restyle` as its source (``max_lead=None``: a live source paces itself). The
source keeps going until the restyled frames of the first ``--seconds`` of feed are back and
the server has reported its metrics once more, so every measured frame, and every frame in the
server's figures, was made under a live feed (the client's end-of-feed padding, which completes
the last chunk at once, restyles only frames past them).

Per output frame ``i`` of those, on the client's clock:

- ``latency_ms``: from the moment input frame ``i`` was sent (the client's send of it returned)
  to the moment restyled frame ``i`` came out of :meth:`RestyleSession.frames`.
- ``latency_from_capture_ms``: from the moment the source gave frame ``i``. The client's feed
  sends a frame only once the next one shows that no newer frame of its slot is coming, so this
  adds a slot (62.5 ms) and the encoding.

Beside them: the server's own ``metrics.latency_ms`` (arrival of the input frame at the server
to the send of its restyled frame, over its recent 256 frames), the session's engine steps
(:meth:`Engine.stats`, one session at a time so every step between its start and end is its
own) and the skipped input slots (``metrics.frames_skipped``).

The bound is issue 27's: one chunk (12 frames, 0.75 s) plus the session's median step. A chunk
is restyled once its last slot's frame is in, so the first frame of a chunk waits 11 slots for
it, then for the step. Rolling Forcing holds a window of blocks: a restyle block enters at the
highest level at or under the strength and leaves the window one step per level later
(stream/pipelines/rolling_forcing.py), each step waiting for the next block's input, so its
frames wait ``chunks_held`` chunks (the levels at or under the strength) before their step:
``expected_ms`` is that many chunks plus a step. Timings on a shared CPU vary with its load:
read them with the record's machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from framestream.clients.client import ClientError, RestyleSession, StreamClient
from framestream.clients.restyle_session import check_strength
from framestream.evals.bench.environment import describe_run
from framestream.evals.loopback import ServerThread
from framestream.models.registry import DEFAULT_PRESET, GENERATION_PRESETS
from framestream.models.toyworld import Feed, render
from framestream.stream import toyfeed
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig, Pipeline
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.service import ServiceModels, build_pipelines

__all__ = [
    "LiveFeed",
    "PipelineLatency",
    "Spread",
    "chunks_held",
    "explain",
    "main",
    "run",
    "window_levels",
]

PIPELINES = ("longlive", "rolling_forcing")
FPS = toyfeed.FPS  # the toy-world feed's, and the Wan pipelines' slots
FIRST_CHUNK_FRAMES = 9
CHUNK_FRAMES = 12  # a chunk after the first: the target's "one chunk"
PROMPT = "a purple circle and a yellow square move on a brown background"
# admission by compute is not what this measures: a busy shared CPU must not refuse the session
ENGINE = EngineConfig(max_load=1e9, max_step_seconds=1e9)
_RENDER_FRAMES = 16  # the feed is rendered a second at a time, as it is captured


@dataclass(frozen=True, slots=True)
class Spread:
    """Milliseconds: median, 95th percentile and maximum."""

    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Spread | None:
        if not len(seconds):
            return None
        ms = np.asarray(seconds) * 1000
        p50, p95 = np.percentile(ms, [50, 95])
        return cls(round(float(p50), 1), round(float(p95), 1), round(float(ms.max()), 1))


@dataclass(frozen=True, slots=True)
class PipelineLatency:
    """One pipeline's restyle session, over the frames of the measured stretch of feed."""

    pipeline: str
    strength: float
    frames_sent: int  # input frames of the measured stretch
    frames_received: int  # their restyled frames that came back
    frames_skipped: int  # input slots the server skipped (its last metrics.frames_skipped)
    latency_ms: Spread | None  # input sent -> restyled frame received, client clock
    # the same from the second chunk on, leaving out the wait for the session's first step (the
    # slowest of the runs recorded so far)
    latency_after_first_chunk_ms: Spread | None
    latency_from_capture_ms: Spread | None  # captured by the source -> received
    server_latency_ms: dict[str, float] | None  # metrics.latency_ms, as last reported
    steps: int  # engine steps of the session
    step_ms: Spread | None
    server_step_ms: float | None  # metrics.step_ms (its recent steps' median), as last reported
    chunk_ms: float
    bound_ms: float | None  # one chunk + the median step
    within_bound: float | None  # share of the received frames at or under the bound
    within_bound_after_first_chunk: float | None
    window_levels: list[float] | None  # Rolling Forcing: the levels a block passes through
    chunks_held: int  # chunks of input a frame waits for before its step (see chunks_held())
    expected_ms: float | None  # chunks_held chunks + the median step
    within_expected: float | None
    why: str  # explain()
    latency_ms_per_frame: list[float | None]  # by output index; None: never received


@dataclass(eq=False)
class LiveFeed:
    """The toy-world feed of ``seed`` as a live camera gives it, frame ``i`` at ``start + i /
    fps`` on the wall clock (late when the loop is: a camera's frames wait in its buffer too),
    until :attr:`stop` is set or the session ends.

    The client's feed sends a frame before asking its source for the next one but one, so each
    time the source resumes it stamps every frame whose send has returned since
    (:attr:`RestyleSession.frames_sent`): :attr:`sent` (and :attr:`captured`), by input index.
    """

    seed: int
    size: tuple[int, int] = toyfeed.SIZE
    fps: float = toyfeed.FPS
    session: RestyleSession | None = None  # set once restyle() returns, before the first frame
    captured: list[float] = field(default_factory=list)  # time.monotonic()
    sent: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def frames(self) -> AsyncIterator[tuple[float, np.ndarray]]:
        feed, start = Feed(self.seed, self.size, self.fps), time.monotonic()
        window: np.ndarray | None = None
        index = 0
        while True:
            self._note_sent()
            if self.stop.is_set() or (self.session is not None and self.session.ended):
                return
            if index % _RENDER_FRAMES == 0:
                window = render(feed.window(index, _RENDER_FRAMES))
            assert window is not None
            await asyncio.sleep(max(0.0, start + index / self.fps - time.monotonic()))
            self.captured.append(time.monotonic())
            yield index / self.fps, window[index % _RENDER_FRAMES]
            index += 1

    def _note_sent(self) -> None:
        if self.session is None:
            return
        now = time.monotonic()
        while len(self.sent) < self.session.frames_sent:
            self.sent.append(now)


def window_levels(pipeline: Pipeline, strength: float) -> tuple[float, ...] | None:
    """Rolling Forcing's levels (sigmas) a restyle block passes through in the window, one a
    step: those at or under ``strength``; ``None`` for a pipeline without a window."""
    if not isinstance(pipeline, RollingForcingPipeline):
        return None
    sigmas = pipeline.models.schedule_for(pipeline.config.schedule).sigmas
    return tuple(round(sigma, 3) for sigma in sigmas if sigma <= strength)


def chunks_held(levels: tuple[float, ...] | None) -> int:
    """Chunks of input a restyled frame's step waits for, its own included: one for LongLive
    (a step restyles the chunk whose input just completed); for Rolling Forcing, one per window
    level, since a block leaves the window that many steps after it entered and each step
    takes in the next block's input (a block under every level leaves as it enters)."""
    return 1 if levels is None else max(1, len(levels))


def explain(levels: tuple[float, ...] | None, step_seconds: float | None) -> str:
    """Why the frames wait as long as they do, in words."""
    if levels is None:
        why = (
            "a step restyles the chunk whose input just completed: a chunk's first frame waits "
            "11 slots for its last, then for the step"
        )
    elif len(levels) <= 1:
        why = "a block leaves the window in the step it enters: as LongLive, one chunk and a step"
    else:
        n = len(levels)
        why = (
            f"a block enters the window at sigma {levels[0]:g}, the highest level at or under "
            f"the strength, and exits after {n} passes, one a step (levels {list(levels)}); "
            "each step takes in the next block's input, so the step a block exits in waits for "
            f"the input of the block {n - 1} behind it: its frames wait up to {n} chunks for "
            "input, then a step"
        )
    chunk = CHUNK_FRAMES / FPS
    if step_seconds is not None and step_seconds > chunk:
        why += (
            f"; its median step ({1000 * step_seconds:.0f} ms) is longer than a chunk "
            f"({1000 * chunk:.0f} ms), so the feed comes faster than it is restyled: input waits, "
            "more with every chunk, until whole chunks are skipped (max_input_frames)"
        )
    return why


@dataclass(eq=False)
class _Observed:
    """What a session's run saw, before it is summed up."""

    feed: LiveFeed
    received: dict[int, float] = field(default_factory=dict)  # output index -> time.monotonic()
    metrics: list[dict] = field(default_factory=list)  # the session's metrics messages
    step_seconds: list[float] = field(default_factory=list)  # its engine steps


async def measure(
    served: ServerThread,
    engine: Engine,
    pipeline: str,
    levels: tuple[float, ...] | None,
    args: argparse.Namespace,
) -> PipelineLatency:
    """One restyle session of ``pipeline`` on a live feed, until the restyled frames of its
    first ``args.seconds`` are back (or their slots skipped) and the server's next metrics."""
    measured = round(args.seconds * FPS)
    seen = _Observed(LiveFeed(args.seed))
    steps_before = engine.stats().steps
    async with StreamClient.connect(served.url) as client:
        feed = seen.feed
        session = await client.restyle(
            feed.frames(),
            PROMPT,
            strength=args.strength,
            pipeline=pipeline,
            seed=args.seed,
            max_lead=None,
        )
        feed.session = session  # before the feeding task's first frame: nothing awaited since
        bar = tqdm(total=measured, desc=pipeline, unit="frame", leave=False, disable=None)
        measured_in, reported = asyncio.Event(), asyncio.Event()

        async def collect_frames() -> None:
            async for frame in session.frames():
                seen.received[frame.index] = time.monotonic()
                bar.update(min(session.frames_received, measured) - bar.n)
                if session.frames_received >= measured:
                    measured_in.set()

        async def collect_metrics() -> None:
            while True:
                event = await session.events.get()
                if event["type"] == "metrics":
                    seen.metrics.append(event)
                    reported.set()
                elif event["type"] == "error":
                    print(f"{pipeline}: server error {event}", file=sys.stderr)

        tasks = [asyncio.create_task(collect_frames()), asyncio.create_task(collect_metrics())]
        try:
            await asyncio.wait_for(measured_in.wait(), args.seconds + args.timeout)
            # the server's own figures as of the measured frames: its next metrics (once a
            # second), the feed still live meanwhile
            reported.clear()
            await asyncio.wait_for(reported.wait(), args.timeout)
            seen.step_seconds = _steps_since(engine, steps_before)
            feed.stop.set()
            # the feed's tail: its last frame and the padding, sent at once (not measured)
            await asyncio.wait_for(asyncio.shield(session.feeding), args.timeout)
        finally:
            bar.close()
            with contextlib.suppress(ClientError, TimeoutError, OSError):
                await session.stop(timeout=args.timeout)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return _summarize(pipeline, args.strength, levels, measured, seen)


def _steps_since(engine: Engine, before: int) -> list[float]:
    stats = engine.stats()
    count = stats.steps - before
    return list(stats.step_seconds[-count:]) if count > 0 else []


def _summarize(
    pipeline: str,
    strength: float,
    levels: tuple[float, ...] | None,
    measured: int,
    seen: _Observed,
) -> PipelineLatency:
    per_frame: list[float | None] = []
    from_capture: list[float] = []
    for i in range(measured):
        arrived = seen.received.get(i)
        per_frame.append(None if arrived is None else arrived - seen.feed.sent[i])
        if arrived is not None:
            from_capture.append(arrived - seen.feed.captured[i])
    latencies = [s for s in per_frame if s is not None]
    later = [s for s in per_frame[FIRST_CHUNK_FRAMES:] if s is not None]
    chunk = CHUNK_FRAMES / FPS
    step = float(np.median(seen.step_seconds)) if seen.step_seconds else None
    held = chunks_held(levels)

    def within(limit: float | None, sample: list[float]) -> float | None:
        if limit is None or not sample:
            return None
        return round(sum(s <= limit for s in sample) / len(sample), 3)

    bound = None if step is None else chunk + step
    expected = None if step is None else held * chunk + step
    last = seen.metrics[-1] if seen.metrics else {}
    return PipelineLatency(
        pipeline=pipeline,
        strength=strength,
        frames_sent=measured,
        frames_received=len(latencies),
        frames_skipped=int(last.get("frames_skipped") or 0),
        latency_ms=Spread.of(latencies),
        latency_after_first_chunk_ms=Spread.of(later),
        latency_from_capture_ms=Spread.of(from_capture),
        server_latency_ms=last.get("latency_ms"),
        steps=len(seen.step_seconds),
        step_ms=Spread.of(seen.step_seconds),
        server_step_ms=last.get("step_ms"),
        chunk_ms=chunk * 1000,
        bound_ms=None if bound is None else round(bound * 1000, 1),
        within_bound=within(bound, latencies),
        within_bound_after_first_chunk=within(bound, later),
        window_levels=None if levels is None else list(levels),
        chunks_held=held,
        expected_ms=None if expected is None else round(expected * 1000, 1),
        within_expected=within(expected, latencies),
        why=explain(levels, step),
        latency_ms_per_frame=[None if s is None else round(s * 1000, 1) for s in per_frame],
    )


async def _measure_all(
    served: ServerThread,
    engine: Engine,
    levels: dict[str, tuple[float, ...] | None],
    args: argparse.Namespace,
) -> list[PipelineLatency]:
    return [await measure(served, engine, name, levels[name], args) for name in args.pipelines]


def run(args: argparse.Namespace) -> dict:
    """Serve the pipelines, measure each in turn; the record (see the module docstring)."""
    spec = ServiceModels(preset=args.preset, cache_bytes=128 << 20, pipelines=args.pipelines)
    pipelines = build_pipelines(spec, KVCacheManager())
    levels = {name: window_levels(pipelines[name], args.strength) for name in args.pipelines}
    engine = Engine(pipelines, ENGINE)
    load_before = os.getloadavg()
    with ServerThread(ServerConfig(port=0), engine) as served:
        results = asyncio.run(_measure_all(served, engine, levels, args))
    load_after = os.getloadavg()
    info = describe_run(torch.device("cpu"))
    return {
        "benchmark": "restyle_latency",
        "command": " ".join(["python -m framestream.evals.restyle_latency", *sys.argv[1:]]),
        "date": info.date,
        "git_commit": info.git_revision,
        "git_dirty": info.git_dirty,
        "machine": info.machine,
        "torch": info.versions["torch"],
        "torch_threads": torch.get_num_threads(),
        # the host's 1-minute load average before and after the sessions: on a shared CPU the
        # steps, hence the latencies, move with it
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "preset": args.preset,
        "prompt": PROMPT,
        "fps": FPS,
        "seconds": args.seconds,
        "engine": {"max_load": ENGINE.max_load, "max_step_seconds": ENGINE.max_step_seconds},
        "target": "an output frame leaves no later than one chunk + one step after its input "
        "frame arrived (issue 27)",
        "pipelines": [asdict(r) for r in results],
    }


def table(results: list[dict]) -> str:
    """The per-pipeline figures, one row each."""
    header = (
        "pipeline",
        "sent",
        "recv",
        "skip",
        "p50 ms",
        "p95 ms",
        "max ms",
        "step ms",
        "bound ms",
        "in bound",
        "held",
        "expect ms",
        "in expect",
    )
    rows = [header]
    for r in results:
        lat, step = r["latency_ms"] or {}, r["step_ms"] or {}
        cells = (
            r["pipeline"],
            r["frames_sent"],
            r["frames_received"],
            r["frames_skipped"],
            lat.get("p50"),
            lat.get("p95"),
            lat.get("max"),
            step.get("p50"),
            r["bound_ms"],
            r["within_bound"],
            r["chunks_held"],
            r["expected_ms"],
            r["within_expected"],
        )
        rows.append(tuple("-" if c is None else str(c) for c in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20.0, help="feed measured per pipeline")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--preset", choices=sorted(GENERATION_PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--seed", type=int, default=20_000, help="the feed's and the noise's")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds past the feed to wait for frames"
    )
    args = parser.parse_args(argv)
    args.pipelines = tuple(args.pipelines.split(","))
    if not set(args.pipelines) <= set(PIPELINES) or not args.pipelines:
        parser.error(f"--pipelines must be among {PIPELINES}")
    if not args.seconds > 0 or not args.timeout > 0:
        parser.error("--seconds and --timeout must be positive")
    try:
        args.strength = check_strength(args.strength)
    except ValueError as exc:
        parser.error(f"--strength: {exc}")
    record = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record["pipelines"]))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
