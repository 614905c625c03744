"""Generation: LongLive and Rolling Forcing streams, one variant after another on the same models.

Per variant and pipeline, one stream of ``chunks`` steps (a step emits 12 video frames: a
LongLive chunk of 3 latent frames; a Rolling Forcing window pass + its exiting block's cache
pass, the first step including the window's ramp-up), each step timed as its DiT part
(``denoise``) and its streamed VAE decode. Then ``switches`` prompt switches on the same
stream, then ``new_sessions`` fresh sessions timed to their first frame. Medians and
percentiles are over the steps after ``warmup``::

    fps_dit           frames per step / median DiT ms          (no decode)
    fps               frames per step / median (DiT + decode)  (decode in series, as served)
    step_ms_pNN       DiT + decode per step
    first_frame_ms    open a session -> its first decoded frame (models loaded, process warm)
    switch_stall_ms   the step after a switch (recache included) minus the steady DiT median
    switch_to_frame_ms  the switch call -> the first frame under the new prompt, at a step
                      boundary (a switch arriving mid-step also waits for that step)
    cache_bytes       the session's KV blocks, largest over the stream
    late_over_early   last third of the steps over the first third: 1.0 when the cost is flat
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from evals.bench.console import progress
from evals.bench.loaders import ModelShelf, release_memory
from evals.bench.record import Series, Variant, Workload
from evals.bench.timing import Clock, late_over_early, percentiles
from evals.bench.variants import OURS, VariantSpec
from models.registry import WanModels
from stream.kvcache import CacheGeometry, KVCacheManager
from stream.pipelines.base import GenerationRequest
from stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from stream.pipelines.rolling_forcing import RollingForcingConfig, RollingForcingPipeline
from stream.pipelines.wan import WanStreamPipeline, WanStreamState

__all__ = ["GENERATION_PIPELINES", "PROMPTS", "GenerationSettings", "run_generation"]

GENERATION_PIPELINES = {"longlive": "LongLive", "rolling_forcing": "Rolling Forcing"}
PROMPTS = (
    "a red circle moves right on a black background",
    "a yellow triangle is still on a brown background",
    "a corgi surfing a wave at sunset",
    "a cyan square bounces on a gray background",
    "a purple diamond is still on a silver background",
)
# Latent frames a stream of the published policies can hold at once, with room to spare:
# LongLive 3 sink + 9 window; Rolling Forcing 3 sink + 3 history + 15 window + 3 arriving.
_FRAMES_HELD = 32


@dataclass(frozen=True)
class GenerationSettings:
    pipelines: tuple[str, ...]  # keys of GENERATION_PIPELINES
    size: tuple[int, int]  # (height, width) in pixels
    chunks: int  # steps of the measured stream
    warmup: int  # first steps left out of the steady figures
    switches: int  # prompt switches after the stream
    new_sessions: int  # fresh sessions timed to their first frame

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
        variants = {}
        for spec in specs:
            pipe = _pipeline(kind, models, spec, settings)
            try:
                if spec.name == OURS:
                    cold = _warm_up(pipe, settings, clock, prompts)
                variants[spec.name] = _measure(pipe, spec, settings, clock, prompts)
            finally:
                del pipe
                release_memory(models.device)
        variants[OURS].add_figure(
            "first_frame_cold_ms",
            cold,
            "ms",
            "the process's first session to its first frame (plans, allocator), untimed otherwise",
        )
        config = {
            "preset": shelf.target.preset,
            "size": f"{width}x{height}",
            "dtype": str(models.dtype).removeprefix("torch."),
            **{k: v for k, v in asdict(settings).items() if k not in ("pipelines", "size")},
        }
        title = f"{GENERATION_PIPELINES[kind]} ({shelf.target.preset}, {width}x{height})"
        yield kind, Workload(title, config, variants, OURS)


class _Prompts:
    """A prompt never asked before, so each open and switch pays its text encoding, as a new
    prompt at the service does (the prompt cache is shared by every variant)."""

    def __init__(self) -> None:
        self._count = itertools.count()

    def next(self) -> str:
        n = next(self._count)
        return f"{PROMPTS[n % len(PROMPTS)]}, take {n}"


def _warm_up(pipe: WanStreamPipeline, settings: GenerationSettings, clock: Clock, prompts) -> float:
    """A short untimed stream (steps and a switch) before any variant is measured, so that the
    first variant does not pay the process's one-time costs; returns its first frame's ms."""
    height, width = settings.size
    start = clock.now()
    state = pipe.open(GenerationRequest(prompts.next(), 0, height, width))
    pipe.step(state)
    first_frame = clock.now() - start
    pipe.step(state)
    pipe.switch_prompt(state, prompts.next())
    pipe.step(state)
    pipe.close(state)
    return first_frame


def _pipeline(
    kind: str, models: WanModels, spec: VariantSpec, settings: GenerationSettings
) -> WanStreamPipeline:
    """A pipeline for ``spec`` over a pool of its own, one latent frame per block."""
    rows, cols = models.token_grid(*settings.size)
    cfg = models.dit.config
    geometry = CacheGeometry(cfg.num_layers, cfg.num_heads, cfg.head_dim, models.dtype)
    # every latent frame the stream makes, for a cache that never evicts
    stream_frames = 3 * (settings.chunks + settings.switches + 5)
    frames = _FRAMES_HELD + (stream_frames if spec.growing else 0)
    pool_bytes = (frames + 1) * rows * cols * geometry.bytes_per_token
    manager = KVCacheManager()
    if kind == "longlive":
        config = LongLiveConfig(attention_backend=spec.backend)
        if spec.growing:
            config = replace(
                config,
                window_frames=stream_frames,
                recache_frames=config.sink_frames + stream_frames,
            )
        return LongLivePipeline(models, manager, pool_bytes, config, block_size=rows * cols)
    config = RollingForcingConfig(attention_backend=spec.backend)
    if spec.growing:
        config = replace(config, history_frames=stream_frames)
    return RollingForcingPipeline(models, manager, pool_bytes, config, block_size=rows * cols)


def _measure(
    pipe: WanStreamPipeline,
    spec: VariantSpec,
    settings: GenerationSettings,
    clock: Clock,
    prompts: _Prompts,
) -> Variant:
    height, width = settings.size
    device = pipe.models.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    label = f"{type(pipe).__name__.removesuffix('Pipeline')} {spec.name}"
    state = pipe.open(GenerationRequest(prompts.next(), 0, height, width))
    dit, decode, frames, cache_bytes = [], [], [], []
    for _ in progress(range(settings.chunks), f"{label}: steps"):
        start = clock.now()
        latents = pipe.denoise(state)
        middle = clock.now()
        chunk = pipe.decode(state, latents)
        end = clock.now()
        dit.append(middle - start)
        decode.append(end - middle)
        frames.append(len(chunk))
        cache_bytes.append(_session_bytes(pipe, state))
    steady = slice(settings.warmup, None)
    dit_median = statistics.median(dit[steady])
    switch_dit, switch_to_frame = [], []
    for _ in progress(range(settings.switches), f"{label}: switches"):
        start = clock.now()
        pipe.switch_prompt(state, prompts.next())
        latents = pipe.denoise(state)
        middle = clock.now()
        pipe.decode(state, latents)
        switch_dit.append(middle - start)
        switch_to_frame.append(clock.now() - start)
    pipe.close(state)
    first_frame = []
    for i in range(settings.new_sessions):
        start = clock.now()
        fresh = pipe.open(GenerationRequest(prompts.next(), 1 + i, height, width))
        pipe.step(fresh)
        first_frame.append(clock.now() - start)
        pipe.close(fresh)

    step = [a + b for a, b in zip(dit, decode, strict=True)]
    per_step = statistics.median(frames[steady])
    decode_median = statistics.median(decode[steady])
    variant = Variant(spec.description)
    add = variant.add_figure
    add("dit_ms", dit_median, "ms", "DiT per step, median")
    add("decode_ms", decode_median, "ms", "streamed VAE decode per step, median")
    for p, value in percentiles(step[steady]).items():
        add(f"step_ms_p{p}", value, "ms", f"DiT + decode per step, p{p}")
    add("frames_per_step", per_step, "frames", "video frames per steady step")
    add("fps_dit", 1e3 * per_step / dit_median, "fps", "frames/s of the DiT alone")
    add("fps", 1e3 * per_step / (dit_median + decode_median), "fps", "frames/s, decode in series")
    add("first_frame_ms", statistics.median(first_frame), "ms", "new session to its first frame")
    add(
        "switch_stall_ms",
        statistics.median(switch_dit) - dit_median,
        "ms",
        "extra DiT time of the step after a prompt switch (recache), median",
    )
    add(
        "switch_to_frame_ms",
        statistics.median(switch_to_frame),
        "ms",
        "prompt switch to the first frame under the new prompt, median",
    )
    add("cache_bytes", max(cache_bytes), "bytes", "KV cache held by the session, largest")
    add(
        "late_over_early",
        late_over_early(step[steady]),
        "ratio",
        "step time, last third of the steady steps over the first third",
    )
    if device.type == "cuda":
        add("peak_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, "GiB", "peak")
    steps = list(range(len(step)))
    variant.series = {
        "step_ms": Series("DiT + decode per step", "ms", "step", steps, step),
        "dit_ms": Series("DiT per step", "ms", "step", steps, dit),
        "decode_ms": Series("VAE decode per step", "ms", "step", steps, decode),
        "cache_bytes": Series("KV cache of the session", "bytes", "step", steps, cache_bytes),
        "switch_to_frame_ms": Series(
            "prompt switch to its first frame",
            "ms",
            "switch",
            list(range(len(switch_to_frame))),
            switch_to_frame,
        ),
        "first_frame_ms": Series(
            "new session to its first frame",
            "ms",
            "session",
            list(range(len(first_frame))),
            first_frame,
        ),
    }
    return variant


def _session_bytes(pipe: WanStreamPipeline, state: WanStreamState) -> int:
    return state.cache.cache.num_blocks() * pipe.pool.bytes_per_block
