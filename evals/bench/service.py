"""The service end to end: LongLive frames delivered over WebSocket to N clients, against the
same pipeline stepped in process.

For each N of ``clients``, a fresh engine and a real server on a loopback port; N connections
of the project's own client each start one benchmark session (``realtime: false``: frames as
fast as they are made) and decode what arrives. Once every client has its first frame, each one
times the arrivals of the first frames of its next ``chunks`` chunks, and keeps reading until
all are done, so no client runs alone at either end. Delivered frames/s is the sum of the
clients' rates. The baseline ``direct`` steps N sessions in turn in this process, no server,
before and after the served runs (the faster of the two counts). Per frame, the server's
overhead is ``1000 / served fps - 1000 / direct fps`` at the same N; it reads "within noise"
when smaller than the larger interquartile range of the two samples behind it (milliseconds
per frame of each served chunk over all clients, of each direct round of the N sessions, both
direct runs).
On a CPU the engine, the encoder threads and the clients share the cores: read the ratios.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from framestream.clients.client import StreamClient
from framestream.evals.bench.console import progress
from framestream.evals.bench.generation import PROMPTS
from framestream.evals.bench.loaders import ModelShelf, release_memory
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.timing import Clock, Difference
from framestream.models.registry import WanModels
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import CacheGeometry, KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.requests import GenerationRequest
from framestream.stream.server import build_server

__all__ = [
    "FORMATS",
    "Chunking",
    "ServiceSettings",
    "Throughput",
    "delivered_fps",
    "direct_fps",
    "longlive_for",
    "run_service",
]

FORMATS = ("jpeg", "png", "raw", "h264")
DIRECT = "direct"
_SESSION_FRAMES = 16  # latent frames a LongLive session can hold (3 sink + 9 window + slack)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Frames a second of a run, and the sample of milliseconds per frame behind it."""

    fps: float  # over the whole run
    ms_per_frame: list[float]  # one per round (direct) or per chunk over all clients (served)

    def faster(self, other: Throughput) -> Throughput:
        """The faster run's rate, with both runs' samples (their scatter is the noise)."""
        return Throughput(max(self.fps, other.fps), self.ms_per_frame + other.ms_per_frame)


@dataclass(frozen=True)
class ServiceSettings:
    clients: tuple[int, ...]  # connections at once, one session each
    chunks: int  # chunks timed per client
    formats: tuple[str, ...]  # the first is ours; the others are compared with it
    size: tuple[int, int]  # (height, width)

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ValueError(f"formats must be among {FORMATS}, got {self.formats}")
        if not self.clients or min(self.clients) < 1 or self.chunks < 1:
            raise ValueError(f"need client counts >= 1 and chunks >= 1: {self}")


def longlive_for(models: WanModels, sessions: int, size: tuple[int, int]) -> LongLivePipeline:
    """A LongLive pipeline whose pool holds ``sessions`` sessions of ``size`` (height, width)."""
    rows, cols = models.token_grid(*size)
    cfg = models.dit.config
    geometry = CacheGeometry(cfg.num_layers, cfg.num_heads, cfg.head_dim, models.dtype)
    frame_bytes = rows * cols * geometry.bytes_per_token
    pool_bytes = (sessions * _SESSION_FRAMES + 1) * frame_bytes
    return LongLivePipeline(models, KVCacheManager(), pool_bytes, block_size=rows * cols)


def run_service(shelf: ModelShelf, settings: ServiceSettings) -> Iterator[tuple[str, Workload]]:
    models = shelf.wan
    height, width = settings.size
    pipe = longlive_for(models, max(settings.clients), settings.size)
    counts = sorted(set(settings.clients))
    variants: dict[str, Variant] = {}
    rates: dict[str, dict[int, Throughput]] = {DIRECT: {}}
    try:
        clock = Clock(models.device)
        for n in counts:
            rates[DIRECT][n], chunking = direct_fps(pipe, n, settings.size, settings.chunks, clock)
        for fmt in settings.formats:
            rates[fmt] = {}
            for n in progress(counts, f"service {fmt}: clients"):
                rates[fmt][n] = asyncio.run(_served_fps(pipe, n, fmt, settings, chunking))
        for n in counts:  # again after: a slow spell of a shared machine must not flatter us
            again = direct_fps(pipe, n, settings.size, settings.chunks, clock)[0]
            rates[DIRECT][n] = rates[DIRECT][n].faster(again)
    finally:
        del pipe
        release_memory(models.device)
    for name in (*settings.formats, DIRECT):  # ours first, as in every workload
        by_count = rates[name]
        served = name != DIRECT
        description = (
            f"{name} frames over a loopback WebSocket to the project's client"
            if served
            else "the same LongLive sessions stepped in turn in process: no server, no encoding"
        )
        variant = variants[name] = Variant(description)
        for n, run in by_count.items():
            fps = run.fps
            variant.add_figure(f"fps_{n}", fps, "fps", f"frames/s delivered to {n} clients")
            variant.add_figure(f"ms_per_frame_{n}", 1e3 / fps, "ms", f"per frame, {n} clients")
            if served:
                direct = rates[DIRECT][n]
                step = 1e3 / direct.fps
                overhead = Difference.of(1e3 / fps - step, run.ms_per_frame, direct.ms_per_frame)
                label = f"server overhead per frame, {n} clients"
                variant.add_difference(f"overhead_ms_{n}", overhead, "ms", label)
                fraction = Difference(overhead.value / step, overhead.spread / step)
                label = f"overhead over the direct step, {n} clients"
                variant.add_difference(f"overhead_fraction_{n}", fraction, "ratio", label)
        variant.series["fps_by_clients"] = Series(
            "frames/s delivered", "fps", "clients", counts, [by_count[n].fps for n in counts]
        )
    config = {
        "preset": shelf.target.preset,
        "pipeline": "longlive",
        "size": f"{width}x{height}",
        **{k: v for k, v in asdict(settings).items() if k != "size"},
    }
    title = f"LongLive over WebSocket ({shelf.target.preset}, {width}x{height})"
    yield "longlive_websocket", Workload(title, config, variants, settings.formats[0])


@dataclass(frozen=True)
class Chunking:
    """Where a stream's chunks start: frame indices ``first, first + every, ...``."""

    first: int  # frames of the first chunk (the streamed VAE's first chunk is shorter)
    every: int  # frames of a steady chunk

    def starts_chunk(self, index: int) -> bool:
        return index >= self.first and (index - self.first) % self.every == 0


def direct_fps(
    pipe: LongLivePipeline, n: int, size: tuple[int, int], chunks: int, clock: Clock
) -> tuple[Throughput, Chunking]:
    """Frames/s of ``n`` sessions of ``size`` stepped in turn in this process, ``chunks`` steps
    each after their first (each round of the ``n`` steps a sample), and where their chunks
    start."""
    height, width = size
    states = [
        pipe.open(GenerationRequest(PROMPTS[i % len(PROMPTS)], i, height, width)) for i in range(n)
    ]
    try:
        first = [len(pipe.step(state)) for state in states][0]  # left out, as the clients do
        start, sizes, rounds = clock.now(), [], []
        for _ in range(chunks):
            begun, made = clock.now(), 0
            for state in states:
                sizes.append(len(pipe.step(state)))
                made += sizes[-1]
            rounds.append((clock.now() - begun) / made)
        elapsed = clock.now() - start
        rate = Throughput(1e3 * sum(sizes) / elapsed, rounds)
        return rate, Chunking(first, statistics.mode(sizes))
    finally:
        for state in states:
            pipe.close(state)


async def _served_fps(
    pipe: LongLivePipeline, n: int, fmt: str, settings: ServiceSettings, chunking: Chunking
) -> Throughput:
    """Frames/s delivered to ``n`` clients at once (the sum of their rates)."""
    engine = Engine({"longlive": pipe}, EngineConfig(max_sessions=n))
    async with build_server(ServerConfig(port=0, max_sessions_per_connection=1), engine) as server:
        return await delivered_fps(server.url, n, fmt, settings.size, settings.chunks, chunking)


async def delivered_fps(
    url: str, n: int, fmt: str, size: tuple[int, int], chunks: int, chunking: Chunking
) -> Throughput:
    """Frames/s that ``n`` clients of the server at ``url``, one benchmark session each, get at
    once (the sum of their rates), over ``chunks`` chunks each once all have a first frame;
    each chunk a sample (its milliseconds per frame over all the clients' rates then)."""
    height, width = size
    all_started, all_done = asyncio.Event(), asyncio.Event()
    started = done = 0

    async def client(i: int) -> list[float]:
        nonlocal started, done
        async with StreamClient.connect(url, max_queued_frames=1024) as connection:
            session = await connection.generate(
                PROMPTS[i % len(PROMPTS)],
                seed=i,
                height=height,
                width=width,
                format=fmt,
                realtime=False,
            )
            marks: list[float] = []  # arrival of the first frame of each timed chunk
            async for frame in session.frames():
                if frame.index == 0:
                    started += 1
                    if started == n:
                        all_started.set()
                timing = all_started.is_set() and len(marks) <= chunks
                if timing and chunking.starts_chunk(frame.index):
                    marks.append(time.perf_counter())
                    if len(marks) == chunks + 1:
                        done += 1
                        if done == n:
                            all_done.set()
                if all_done.is_set():
                    break
            await session.stop()
        return marks

    marks = await asyncio.gather(*(client(i) for i in range(n)))
    fps = math.fsum(chunking.every * chunks / (m[-1] - m[0]) for m in marks)
    # chunk j's rate over all clients: each delivered `every` frames between two marks
    per_chunk = [
        1e3 / math.fsum(chunking.every / (m[j + 1] - m[j]) for m in marks) for j in range(chunks)
    ]
    return Throughput(fps, per_chunk)
