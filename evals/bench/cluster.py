"""Scaling over engines: LongLive frames delivered over WebSocket to N clients through one front,
the sessions on Ray engine actors (one per GPU on CUDA), against the same front over one of
those engines and over an engine in this process.

For each N of ``clients``: N connections of the project's client, one benchmark session each
(``realtime: false``), timed as in the ``service`` suite (:func:`evals.bench.service.delivered_fps`:
chunk starts, once every client has its first frame). Two workloads, each with its ``ours``:

* ``longlive_engines``: ``ray_E`` (ours: the front over ``engines`` actors, sessions placed
  least-loaded) beside ``ray_1`` (the same front over the first actor alone). The ratio of
  their frames/s at N is what the extra engines bring.
* ``ray_hop``: ``ray_1`` (ours) beside ``local`` (the same front over an engine in this
  process, on this process's device) and ``direct`` (the sessions stepped in turn here, no
  server). ``hop_ms_N`` = ms per frame through the actor minus through the local engine: what
  the Ray hop costs a frame (pickling, the object store, one poll per step).

The actors and the local engine serve the same models (random weights at full size) with one
pool sized for the largest N. On CUDA each actor reserves one GPU and this process uses the
first; on a CPU everything shares the cores (read the structure, not the ratios).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from framestream.evals.bench.console import progress
from framestream.evals.bench.loaders import ModelShelf, Target, release_memory
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.service import (
    Chunking,
    Throughput,
    delivered_fps,
    direct_fps,
    longlive_for,
)
from framestream.evals.bench.timing import Clock, Difference
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig, Pipeline
from framestream.stream.server import build_server

__all__ = ["ClusterSettings", "run_cluster"]

_NAMESPACE = "stream-bench"  # the bench's engines, apart from any served ones
_FORMAT = "jpeg"


@dataclass(frozen=True)
class ClusterSettings:
    clients: tuple[int, ...]  # connections at once, one session each
    chunks: int  # chunks timed per client
    size: tuple[int, int]  # (height, width)
    engines: int  # engine actors of the largest variant (1 and this many are measured)

    def __post_init__(self) -> None:
        if self.engines < 2:
            raise ValueError(f"engines must be at least 2 (1 is the baseline), got {self.engines}")
        if not self.clients or min(self.clients) < 1 or self.chunks < 1:
            raise ValueError(f"need client counts >= 1 and chunks >= 1: {self}")


def run_cluster(shelf: ModelShelf, settings: ClusterSettings) -> Iterator[tuple[str, Workload]]:
    import ray
    import torch

    target = shelf.target
    gpus = 1.0 if target.device.type == "cuda" else 0.0
    if gpus and torch.cuda.device_count() < settings.engines:
        raise SystemExit(
            f"stream bench: --engines {settings.engines} needs as many GPUs, "
            f"{torch.cuda.device_count()} visible"
        )
    counts = sorted(set(settings.clients))
    rates: dict[str, dict[int, Throughput]] = {}
    joined = not ray.is_initialized()
    if joined:  # a cluster of this machine; a test may have started one already
        ray.init(
            num_cpus=max(os.cpu_count() or 1, settings.engines + 1),
            num_gpus=torch.cuda.device_count() if gpus else 0,
            namespace=_NAMESPACE,
            include_dashboard=False,
        )
    # the actors load their models while this process loads its own; nothing is timed until
    # every one is up, so no load shares a device with a measurement
    actors = _start_actors(target, settings, max(counts), gpus)
    try:
        pipe = longlive_for(shelf.wan, max(counts), settings.size)
        asyncio.run(_wait_for(actors))
        clock = Clock(target.device)
        try:
            rates["direct"], chunking = {}, Chunking(1, 1)
            for n in counts:
                rates["direct"][n], chunking = direct_fps(
                    pipe, n, settings.size, settings.chunks, clock
                )
            local = functools.partial(_local_front, pipe, max(counts))
            rates["local"] = _sweep(local, counts, settings, chunking, "local")
        finally:
            del pipe
            release_memory(target.device)
        for k in (1, settings.engines):
            front = functools.partial(_cluster_front, actors[:k])
            rates[f"ray_{k}"] = _sweep(front, counts, settings, chunking, f"{k} engines")
    finally:
        for actor in actors:
            ray.kill(actor)
        if joined:
            ray.shutdown()
    config = {
        "preset": target.preset,
        "pipeline": "longlive",
        "size": f"{settings.size[1]}x{settings.size[0]}",
        "format": _FORMAT,
        "gpus_per_engine": gpus,
        **{k: v for k, v in asdict(settings).items() if k != "size"},
    }
    ours = f"ray_{settings.engines}"
    title = f"LongLive to N clients on 1 and {settings.engines} engines ({target.preset})"
    variants = {name: _variant(name, rates[name], counts) for name in (ours, "ray_1")}
    yield "longlive_engines", Workload(title, config, variants, ours)
    hop = _variant("ray_1", rates["ray_1"], counts)
    for n in counts:
        ray, local = rates["ray_1"][n], rates["local"][n]
        extra = Difference.of(1e3 / ray.fps - 1e3 / local.fps, ray.ms_per_frame, local.ms_per_frame)
        hop.add_difference(f"hop_ms_{n}", extra, "ms", f"the Ray hop per frame, {n} clients")
    variants = {
        "ray_1": hop,
        "local": _variant("local", rates["local"], counts),
        "direct": _variant("direct", rates["direct"], counts),
    }
    title = f"The Ray hop: one engine as an actor, in this process, direct ({target.preset})"
    yield "ray_hop", Workload(title, config, variants, "ray_1")


_DESCRIPTIONS = {
    "ray_1": "the front over one engine actor",
    "local": "the same front over an engine in this process",
    "direct": "the same sessions stepped in turn in process: no server, no encoding",
}


def _variant(name: str, by_count: Mapping[int, Throughput], counts: list[int]) -> Variant:
    description = _DESCRIPTIONS.get(name) or (
        f"the front over {name.removeprefix('ray_')} engine actors, sessions placed least-loaded"
    )
    variant = Variant(description)
    for n in counts:
        fps = by_count[n].fps
        variant.add_figure(f"fps_{n}", fps, "fps", f"frames/s delivered to {n} clients")
        variant.add_figure(f"ms_per_frame_{n}", 1e3 / fps, "ms", f"per frame, {n} clients")
    variant.series["fps_by_clients"] = Series(
        "frames/s delivered", "fps", "clients", counts, [by_count[n].fps for n in counts]
    )
    return variant


def _sweep(
    front: Callable[[], AbstractAsyncContextManager[str]],
    counts: list[int],
    settings: ClusterSettings,
    chunking: Chunking,
    what: str,
) -> dict[int, Throughput]:
    """Delivered frames/s for each client count, through a fresh front each (``front()``
    serves and yields its URL)."""
    rates = {}
    for n in progress(counts, f"cluster {what}: clients"):
        rates[n] = asyncio.run(_served(front, n, settings, chunking))
    return rates


async def _served(
    front: Callable[[], AbstractAsyncContextManager[str]],
    n: int,
    settings: ClusterSettings,
    chunking: Chunking,
) -> Throughput:
    async with front() as url:
        return await delivered_fps(url, n, _FORMAT, settings.size, settings.chunks, chunking)


@asynccontextmanager
async def _local_front(pipe: Pipeline, sessions: int) -> AsyncIterator[str]:
    engine = Engine({"longlive": pipe}, EngineConfig(max_sessions=sessions))
    async with build_server(ServerConfig(port=0, max_sessions_per_connection=1), engine) as server:
        yield server.url


@asynccontextmanager
async def _cluster_front(actors: list[Any]) -> AsyncIterator[str]:
    """A front over ``actors`` once they hold no session (the last front's are closing), so
    the sessions spread over all of them."""
    from framestream.stream.cluster import ClusterConfig, ClusterEngine

    backend = await ClusterEngine.connect(actors, ClusterConfig(namespace=_NAMESPACE))
    async with build_server(ServerConfig(port=0, max_sessions_per_connection=1), backend) as server:
        async with asyncio.timeout(120):
            while not all(engine.sessions == 0 for engine in backend.status()):
                await asyncio.sleep(0.05)
        yield server.url


async def _wait_for(actors: list[Any]) -> None:
    await asyncio.gather(*(actor.describe.remote() for actor in actors))


def _start_actors(
    target: Target, settings: ClusterSettings, sessions: int, gpus: float
) -> list[Any]:
    from framestream.stream.cluster import ClusterConfig, start_engines

    config = ClusterConfig(engines=settings.engines, gpus_per_engine=gpus, namespace=_NAMESPACE)
    build = functools.partial(_engine_pipelines, target, sessions, settings.size)
    return start_engines(build, EngineConfig(max_sessions=sessions), config)


def _engine_pipelines(target: Target, sessions: int, size: tuple[int, int]) -> dict[str, Pipeline]:
    """On an actor: the suite's models on its device (module level: Ray pickles it by name)."""
    return {"longlive": longlive_for(ModelShelf(target).wan, sessions, size)}
