"""The service end to end: LongLive frames delivered over WebSocket to N clients, against the
same pipeline stepped in process.

For each N of ``clients``, a fresh engine and a real server on a loopback port; N connections
of the project's own client each start one benchmark session (``realtime: false``: frames as
fast as they are made) and decode what arrives. Once every client has its first frame, each one
times the arrivals of the first frames of its next ``chunks`` chunks, and keeps reading until
all are done, so no client runs alone at either end. Delivered frames/s is the sum of the
clients' rates. The baseline ``direct`` steps N sessions in turn in this process, no server,
before and after the served runs (the faster of the two counts). Per frame, the server's
overhead is ``1000 / served fps - 1000 / direct fps`` at the same N.
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
from framestream.evals.bench.timing import Clock
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
    "delivered_fps",
    "direct_fps",
    "longlive_for",
    "run_service",
]

FORMATS = ("jpeg", "png", "raw", "h264")
DIRECT = "direct"
_SESSION_FRAMES = 16  # latent frames a LongLive session can hold (3 sink + 9 window + slack)


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
    rates: dict[str, dict[int, float]] = {DIRECT: {}}
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
            rates[DIRECT][n] = max(rates[DIRECT][n], again)
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
        for n, fps in by_count.items():
            variant.add_figure(f"fps_{n}", fps, "fps", f"frames/s delivered to {n} clients")
            variant.add_figure(f"ms_per_frame_{n}", 1e3 / fps, "ms", f"per frame, {n} clients")
            if served:
                step = 1e3 / rates[DIRECT][n]
                overhead = 1e3 / fps - step
                variant.add_figure(
                    f"overhead_ms_{n}", overhead, "ms", f"server overhead per frame, {n} clients"
                )
                variant.add_figure(
                    f"overhead_fraction_{n}",
                    overhead / step,
                    "ratio",
                    f"overhead over the direct step, {n} clients",
                )
        variant.series["fps_by_clients"] = Series(
            "frames/s delivered", "fps", "clients", counts, [by_count[n] for n in counts]
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
) -> tuple[float, Chunking]:
    """Frames/s of ``n`` sessions of ``size`` stepped in turn in this process, ``chunks`` steps
    each after their first, and where their chunks start."""
    height, width = size
    states = [
        pipe.open(GenerationRequest(PROMPTS[i % len(PROMPTS)], i, height, width)) for i in range(n)
    ]
    try:
        first = [len(pipe.step(state)) for state in states][0]  # left out, as the clients do
        start, sizes = clock.now(), []
        for _ in range(chunks):
            for state in states:
                sizes.append(len(pipe.step(state)))
        elapsed = clock.now() - start
        return 1e3 * sum(sizes) / elapsed, Chunking(first, statistics.mode(sizes))
    finally:
        for state in states:
            pipe.close(state)


async def _served_fps(
    pipe: LongLivePipeline, n: int, fmt: str, settings: ServiceSettings, chunking: Chunking
) -> float:
    """Frames/s delivered to ``n`` clients at once (the sum of their rates)."""
    engine = Engine({"longlive": pipe}, EngineConfig(max_sessions=n))
    async with build_server(ServerConfig(port=0, max_sessions_per_connection=1), engine) as server:
        return await delivered_fps(server.url, n, fmt, settings.size, settings.chunks, chunking)


async def delivered_fps(
    url: str, n: int, fmt: str, size: tuple[int, int], chunks: int, chunking: Chunking
) -> float:
    """Frames/s that ``n`` clients of the server at ``url``, one benchmark session each, get at
    once (the sum of their rates), over ``chunks`` chunks each once all have a first frame."""
    height, width = size
    all_started, all_done = asyncio.Event(), asyncio.Event()
    started = done = 0

    async def client(i: int) -> float:
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
        return chunking.every * chunks / (marks[-1] - marks[0])

    return math.fsum(await asyncio.gather(*(client(i) for i in range(n))))
