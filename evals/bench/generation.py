"""Generation: LongLive and Rolling Forcing streams, one variant after another on the same models.

Per variant and pipeline, one stream of ``chunks`` steps (a step emits 12 video frames: a
LongLive chunk of 3 latent frames; a Rolling Forcing window pass after the cache pass of the
block the last step handed out, the first step being the window's ramp-up), each step timed as
its DiT part (``denoise``) and its streamed VAE decode. Then ``switches`` prompt switches on the
same stream, then ``new_sessions`` fresh sessions timed to their first frame. The variants'
streams run interleaved, a step of each in turn, so a machine that slows down for a while (other
jobs, clocks) slows every variant alike and the ratios hold. Medians and percentiles are over the
steps after ``warmup``::

    fps_dit           frames per step / median DiT ms          (no decode)
    fps               frames per step / median (DiT + decode)  (decode in series)
    step_ms_pNN       DiT + decode per step
    fps_overlap       frames per step / median step period with each chunk's decode running
                      beside the next chunk's DiT on another CUDA stream, as the engine serves
                      (``chunks - warmup`` steps after the stream; on the CPU about fps)
    first_frame_ms    open a session -> its first decoded frame (models loaded, process warm)
    switch_stall_ms   the step after a switch (recache included) minus the steady DiT median;
                      "within noise" when smaller than the larger interquartile range of the
                      two samples (the switch steps', the steady steps')
    switch_to_frame_ms  the switch call -> the first frame under the new prompt, at a step
                      boundary (a switch arriving mid-step also waits for that step)
    cache_bytes       the session's KV blocks, largest over the stream
    late_over_early   last third of the steps over the first third: 1.0 when the cost is flat

The ``published`` variant runs the published loop itself from a checkout the user names
(:mod:`evals.bench.published`, which says how each of its figures is measured and where that
differs from ours); the workload's config records that checkout's commit.

A ``growing`` baseline is sized to the device before its pool is allocated (see
:mod:`evals.bench.memory`): capped, or skipped, when its whole stream would not fit beside the
other variants' pools; the workload's config says so under ``growing``.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from framestream.evals.bench.console import progress
from framestream.evals.bench.loaders import ModelShelf, release_memory
from framestream.evals.bench.memory import GrowingFit, device_budget, fit_growing, frame_bytes
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.timing import Clock, difference, late_over_early, percentiles
from framestream.evals.bench.variants import OURS, VariantSpec, variant_models
from framestream.models.registry import WanModels
from framestream.stream.kvcache import CacheGeometry, KVCacheManager, cache_dtype
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import (
    RollingForcingConfig,
    RollingForcingPipeline,
)
from framestream.stream.pipelines.wan import WanStreamPipeline, WanStreamState
from framestream.stream.requests import GenerationRequest, RestyleRequest

__all__ = [
    "GENERATION_PIPELINES",
    "PROMPTS",
    "GenerationSettings",
    "build_pipeline",
    "run_generation",
]

GENERATION_PIPELINES = {"longlive": "LongLive", "rolling_forcing": "Rolling Forcing"}
PROMPTS = (
    "a red circle moves right on a black background",
    "a yellow triangle is still on a brown background",
    "a corgi surfing a wave at sunset",
    "a cyan square bounces on a gray background",
    "a purple diamond is still on a silver background",
)
# Latent frames a stream of the published policies can hold at once, with room to spare:
# LongLive 3 sink + 9 window; Rolling Forcing 3 sink + 21 history + 15 window, and a block a
# segment for a partial head (RollingWindowConfig.worst_case_blocks).
_FRAMES_HELD = 44


@dataclass(frozen=True)
class GenerationSettings:
    pipelines: tuple[str, ...]  # keys of GENERATION_PIPELINES
    size: tuple[int, int]  # (height, width) in pixels
    chunks: int  # steps of the measured stream
    warmup: int  # first steps left out of the steady figures
    switches: int  # prompt switches after the stream
    new_sessions: int  # fresh sessions timed to their first frame
    memory_budget: int | None = None  # bytes the run may allocate; None: the device's free
    # pipeline -> a checkout of its published repository, for the ``published`` variant
    checkouts: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.pipelines) - set(GENERATION_PIPELINES)
        if unknown:
            raise ValueError(f"unknown pipelines {sorted(unknown)}; known: {GENERATION_PIPELINES}")
        if self.chunks < self.warmup + 3:
            raise ValueError(f"chunks ({self.chunks}) must exceed warmup ({self.warmup}) by 3+")
        if self.switches < 1 or self.new_sessions < 1:
            raise ValueError("switches and new_sessions must be at least 1")


def run_generation(
    shelf: ModelShelf, settings: GenerationSettings, specs: Sequence[VariantSpec]
) -> Iterator[tuple[str, Workload]]:
    """Yield ``(pipeline name, workload)`` as each pipeline's variants are measured."""
    models = shelf.wan
    clock = Clock(models.device)
    prompts = _Prompts()
    height, width = settings.size
    for kind in settings.pipelines:
        if models.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(models.device)
        label = GENERATION_PIPELINES[kind]
        ours, *others = specs  # variant_specs puts ours first
        shared = (settings, clock, prompts)
        streams: list = []
        fit: GrowingFit | None = None
        published = contextlib.ExitStack()  # a published checkout stays imported until closed
        try:
            streams.append(_Stream(_pipeline(kind, shelf, ours, settings), ours, *shared))
            cold, working = _warm_up(streams[0].pipe, settings, clock, prompts)
            for spec in sorted(others, key=lambda spec: spec.growing):  # sized from what's left
                if spec.published:
                    stream = _published(kind, spec, models, settings, clock, prompts)
                    streams.append(published.enter_context(stream))
                    streams[-1].warm_up()
                    continue
                growing_frames = None
                if spec.growing:
                    fit = _fit_growing(kind, models, settings, working)
                    if fit.reason is not None:
                        tqdm.write(f"{label}, {spec.name}: {fit.reason}")
                    if fit.skipped:
                        continue
                    growing_frames = fit.frames
                pipe = _pipeline(kind, shelf, spec, settings, growing_frames)
                streams.append(_Stream(pipe, spec, *shared))
                del pipe  # only the streams hold the pools: released with them below
            for stream in streams:
                stream.open()
            for _ in progress(range(settings.chunks), f"{label}: steps"):
                for stream in streams:
                    stream.step()
            for stream in streams:  # a variant at a time: interleaving would break its overlap
                stream.overlapped(settings.chunks - settings.warmup)
            for _ in range(settings.switches):
                for stream in streams:
                    stream.switch()
            for stream in streams:
                stream.close()
            for _ in range(settings.new_sessions):
                for stream in streams:
                    stream.new_session()
            variants = {  # in the order asked: a growing stream was opened last
                spec.name: stream.summary()
                for spec in specs
                for stream in streams
                if stream.spec is spec
            }
            commits = {s.spec.name: s.commit for s in streams if s.spec.published}
        finally:
            published.close()
            del streams
            release_memory(models.device)
        variants[OURS].add_figure(
            "first_frame_cold_ms",
            cold,
            "ms",
            "the pipeline's first session in the process to its first frame (plans, allocator)",
        )
        config = {
            "preset": shelf.target.preset,
            "size": f"{width}x{height}",
            "dtype": str(models.dtype).removeprefix("torch."),
            **{
                k: v
                for k, v in asdict(settings).items()
                if k not in ("pipelines", "size", "checkouts")
            },
        }
        for name, commit in commits.items():
            config[f"{name}_commit"] = commit
        if fit is not None:
            config["growing"] = fit.to_json()
        if models.device.type == "cuda":
            config["peak_memory_gib"] = torch.cuda.max_memory_allocated(models.device) / 2**30
        title = f"{GENERATION_PIPELINES[kind]} ({shelf.target.preset}, {width}x{height})"
        yield kind, Workload(title, config, variants, OURS)


def _published(
    kind: str,
    spec: VariantSpec,
    models: WanModels,
    settings: GenerationSettings,
    clock: Clock,
    prompts: _Prompts,
):
    """The published loop's measured stream, from the checkout named for ``kind`` (a context
    manager: its checkout is imported while it is open)."""
    from framestream.evals.bench.published import published_stream

    if kind not in settings.checkouts:
        raise ValueError(f"the published variant needs a checkout for {kind}")
    return published_stream(
        kind, settings.checkouts[kind], spec, models, settings, clock, prompts.next
    )


class _Prompts:
    """A prompt never asked before, so each open and switch pays its text encoding, as a new
    prompt at the service does (the prompt cache is shared by every variant)."""

    def __init__(self) -> None:
        self._count = itertools.count()

    def next(self) -> str:
        n = next(self._count)
        return f"{PROMPTS[n % len(PROMPTS)]}, take {n}"


def _warm_up(
    pipe: WanStreamPipeline, settings: GenerationSettings, clock: Clock, prompts: _Prompts
) -> tuple[float, int]:
    """A short untimed stream (steps and a switch) before any variant is measured, so that the
    first variant does not pay the process's one-time costs; returns its first frame's ms and
    the most it allocated beyond what was held before it (on CUDA; 0 elsewhere)."""
    height, width = settings.size
    device = pipe.models.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    start = clock.now()
    state = pipe.open(GenerationRequest(prompts.next(), 0, height, width))
    pipe.step(state)
    first_frame = clock.now() - start
    pipe.step(state)
    pipe.switch_prompt(state, prompts.next())
    pipe.step(state)
    pipe.close(state)
    if device.type != "cuda":
        return first_frame, 0
    return first_frame, torch.cuda.max_memory_allocated(device) - held


def _stream_frames(settings: GenerationSettings) -> int:
    """Every latent frame a measured stream makes: what a cache that never evicts holds."""
    return 3 * (settings.chunks + settings.switches + 5)


def _fit_growing(
    kind: str, models: WanModels, settings: GenerationSettings, working: int
) -> GrowingFit:
    """How many frames a growing ``kind`` stream may keep on what the device has left, a step's
    ``working`` memory (ours', measured in the warm-up) set aside."""
    budget = device_budget(models.device, settings.memory_budget)
    requested = _stream_frames(settings)
    if budget is None:  # nothing to size by: as asked
        return GrowingFit(requested, requested, None)
    rows, cols = models.token_grid(*settings.size)
    cfg = models.dit.config
    geometry = CacheGeometry(
        cfg.num_layers, cfg.num_heads, cfg.head_dim, cache_dtype("auto", models.dtype)
    )
    per_frame = frame_bytes(geometry, rows * cols, cfg.dim, cfg.ffn_dim)
    held = (_FRAMES_HELD + 1) * rows * cols * geometry.bytes_per_token  # its pool's fixed part
    # a LongLive window shorter than ours' plus a chunk would grow nothing
    least = LongLiveConfig().window_frames + 3 if kind == "longlive" else 3
    return fit_growing(requested, per_frame, held, working, budget, step=3, least=least)


def _pipeline(
    kind: str,
    shelf: ModelShelf,
    spec: VariantSpec,
    settings: GenerationSettings,
    growing_frames: int | None = None,
) -> WanStreamPipeline:
    """A pipeline for ``spec`` on the shelf's models (its tiny decoder in place of the Wan VAE
    for a tiny-decoder spec); a growing one keeps ``growing_frames`` (default: every frame of
    the stream) before it evicts."""
    models = shelf.wan
    if spec.decoder == "tiny":
        models = replace(models, vae=shelf.tiny_decoder)
    stream_frames = growing_frames or _stream_frames(settings)
    return build_pipeline(kind, models, spec, settings.size, stream_frames if spec.growing else 0)


def build_pipeline(
    kind: str,
    models: WanModels,
    spec: VariantSpec,
    size: tuple[int, int],
    stream_frames: int = 0,
) -> WanStreamPipeline:
    """A ``kind`` pipeline for ``spec`` at ``size`` over a pool of its own, one latent frame
    per block; a growing ``spec`` keeps ``stream_frames`` latent frames before it evicts."""
    if spec.growing and stream_frames < 1:
        raise ValueError("a growing pipeline needs the frames it keeps (stream_frames >= 1)")
    models = variant_models(models, spec)
    rows, cols = models.token_grid(*size)
    cfg = models.dit.config
    dtype = cache_dtype(spec.kv_cache_dtype, models.dtype)
    geometry = CacheGeometry(cfg.num_layers, cfg.num_heads, cfg.head_dim, dtype)
    frames = _FRAMES_HELD + (stream_frames if spec.growing else 0)
    pool_bytes = (frames + 1) * rows * cols * geometry.bytes_per_token
    manager = KVCacheManager()
    if kind == "longlive":
        config = LongLiveConfig(attention_backend=spec.backend, kv_cache_dtype=spec.kv_cache_dtype)
        if spec.growing:
            config = replace(
                config,
                window_frames=stream_frames,
                recache_frames=config.sink_frames + stream_frames,
            )
        return LongLivePipeline(models, manager, pool_bytes, config, block_size=rows * cols)
    config = RollingForcingConfig(
        attention_backend=spec.backend, kv_cache_dtype=spec.kv_cache_dtype
    )
    if spec.growing:
        config = replace(config, attention_frames=config.attention_frames + stream_frames)
    return RollingForcingPipeline(models, manager, pool_bytes, config, block_size=rows * cols)


class _InputFeed:
    """A restyle stream's synthetic input at the session's size: colour bands drifting one
    pixel a frame (the encoder's cost does not depend on what it sees), stamped at ``fps``."""

    def __init__(self, size: tuple[int, int], fps: float, period: int = 24) -> None:
        height, width = size
        x = np.arange(width)[None, :, None] + np.arange(3)[None, None, :] * 40
        bands = (((x + np.arange(height)[:, None, None]) // 16) % 2 * 200 + 28).astype(np.uint8)
        self._frames = [np.roll(bands, k, axis=1) for k in range(period)]
        self._fps, self._index = fps, 0

    def next(self) -> tuple[float, np.ndarray]:
        """The next frame's ``(timestamp, frame)``."""
        index, self._index = self._index, self._index + 1
        return index / self._fps, self._frames[index % len(self._frames)]


class _Stream:
    """One variant's measured stream, advanced a step at a time, and what was timed."""

    def __init__(
        self,
        pipe: WanStreamPipeline,
        spec: VariantSpec,
        settings: GenerationSettings,
        clock: Clock,
        prompts: _Prompts,
    ) -> None:
        self.pipe, self.spec, self.settings = pipe, spec, settings
        self._clock, self._prompts = clock, prompts
        self._state: WanStreamState | None = None
        self.dit: list[float] = []
        self.decode: list[float] = []
        self.frames: list[int] = []
        self.cache_bytes: list[int] = []
        self.switch_dit: list[float] = []
        self.switch_to_frame: list[float] = []
        self.first_frame: list[float] = []
        self.overlap_period: list[float] = []
        self._inputs: dict[int, _InputFeed] = {}  # id(state) -> a restyle stream's input

    def open(self) -> None:
        self._state = self._open(self._prompts.next(), 0)

    def _open(self, prompt: str, seed: int) -> WanStreamState:
        height, width = self.settings.size
        restyle = None if self.spec.restyle is None else RestyleRequest(self.spec.restyle)
        state = self.pipe.open(GenerationRequest(prompt, seed, height, width, restyle=restyle))
        if restyle is not None:
            self._inputs[id(state)] = _InputFeed(self.settings.size, self.pipe.config.fps)
        return state

    def _feed(self, state: WanStreamState) -> None:
        """A restyle stream's input for its next step, pushed before the step is timed (a
        client's frames arrive while the device works on earlier ones)."""
        feed = self._inputs.get(id(state))
        while feed is not None and not self.pipe.input_ready(state):
            self.pipe.push_frame(state, *feed.next())

    def step(self) -> None:
        clock, state = self._clock, self._state
        self._feed(state)
        start = clock.now()
        latents = self.pipe.denoise(state)
        middle = clock.now()
        chunk = self.pipe.decode(state, latents)
        self.decode.append(clock.now() - middle)
        self.dit.append(middle - start)
        self.frames.append(len(chunk))
        self.cache_bytes.append(state.cache.cache.num_blocks() * self.pipe.pool.bytes_per_block)

    def overlapped(self, steps: int) -> None:
        """``steps`` steps as the engine runs them: each chunk's DiT is launched before the last
        chunk's frames are awaited. The period is the time between successive chunks' frames
        (host clock only: a device-wide synchronize would serialise what is measured)."""
        pipe, state = self.pipe, self._state
        self._feed(state)
        pending = pipe.decode_async(state, pipe.denoise(state))
        pending.result()
        last = time.perf_counter()
        for _ in range(steps + 1):  # the first period still starts from a drained device
            self._feed(state)
            ahead = pipe.decode_async(state, pipe.denoise(state))
            pending.result()
            now = time.perf_counter()
            self.overlap_period.append((now - last) * 1e3)
            last, pending = now, ahead
        pending.result()
        del self.overlap_period[0]

    def switch(self) -> None:
        clock, state = self._clock, self._state
        self._feed(state)
        start = clock.now()
        self.pipe.switch_prompt(state, self._prompts.next())
        latents = self.pipe.denoise(state)
        self.switch_dit.append(clock.now() - start)
        self.pipe.decode(state, latents)
        self.switch_to_frame.append(clock.now() - start)

    def close(self) -> None:
        self._inputs.pop(id(self._state), None)
        self.pipe.close(self._state)
        self._state = None

    def new_session(self) -> None:
        start = self._clock.now()
        fresh = self._open(self._prompts.next(), 1 + len(self.first_frame))
        self._feed(fresh)  # its first chunk's input, already in as a client's would be
        self.pipe.step(fresh)
        self.first_frame.append(self._clock.now() - start)
        self._inputs.pop(id(fresh), None)
        self.pipe.close(fresh)

    def summary(self) -> Variant:
        steady = slice(self.settings.warmup, None)
        step = [a + b for a, b in zip(self.dit, self.decode, strict=True)]
        dit, decode = statistics.median(self.dit[steady]), statistics.median(self.decode[steady])
        per_step = statistics.median(self.frames[steady])
        variant = Variant(self.spec.description)
        add = variant.add_figure
        add("dit_ms", dit, "ms", "DiT per step, median")
        add("decode_ms", decode, "ms", "streamed VAE decode per step, median")
        for p, value in percentiles(step[steady]).items():
            add(f"step_ms_p{p}", value, "ms", f"DiT + decode per step, p{p}")
        add("frames_per_step", per_step, "frames", "video frames per steady step")
        add("fps_dit", 1e3 * per_step / dit, "fps", "frames/s of the DiT alone")
        add("fps", 1e3 * per_step / (dit + decode), "fps", "frames/s, decode in series")
        period = statistics.median(self.overlap_period)
        add("step_overlap_ms", period, "ms", "step period, decode beside the next DiT, median")
        add("fps_overlap", 1e3 * per_step / period, "fps", "frames/s, decode beside the next DiT")
        add(
            "first_frame_ms",
            statistics.median(self.first_frame),
            "ms",
            "new session to its first frame, median",
        )
        variant.add_difference(
            "switch_stall_ms",
            difference(self.switch_dit, self.dit[steady]),
            "ms",
            "extra DiT time of the step after a prompt switch (recache), median",
        )
        add(
            "switch_to_frame_ms",
            statistics.median(self.switch_to_frame),
            "ms",
            "prompt switch to the first frame under the new prompt, median",
        )
        add("cache_bytes", max(self.cache_bytes), "bytes", "KV cache held by the session, largest")
        add(
            "late_over_early",
            late_over_early(step[steady]),
            "ratio",
            "step time, last third of the steady steps over the first third",
        )
        steps = list(range(len(step)))
        variant.series = {
            "step_ms": Series("DiT + decode per step", "ms", "step", steps, step),
            "dit_ms": Series("DiT per step", "ms", "step", steps, self.dit),
            "decode_ms": Series("VAE decode per step", "ms", "step", steps, self.decode),
            "cache_bytes": Series(
                "KV cache of the session", "bytes", "step", steps, self.cache_bytes
            ),
            "switch_to_frame_ms": Series(
                "prompt switch to its first frame",
                "ms",
                "switch",
                list(range(len(self.switch_to_frame))),
                self.switch_to_frame,
            ),
            "first_frame_ms": Series(
                "new session to its first frame",
                "ms",
                "session",
                list(range(len(self.first_frame))),
                self.first_frame,
            ),
        }
        return variant
