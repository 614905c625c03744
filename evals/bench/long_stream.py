"""Long stream: one LongLive stream, the service as shipped, for ``seconds`` of video with a
prompt switch every ``switch_every`` seconds of video, to show that neither its step time nor
the device memory it takes creeps up over minutes.

Each step is timed as its DiT part and its streamed VAE decode, in series, and followed by a
reading of the memory: on CUDA the bytes allocated after the step and the most the allocator
reserved during it (its peak is reset before each step); on the CPU the process's resident set.
The figures compare the last ``window`` seconds of video with the first (after ``warmup``
steps, which pay the process's one-time costs): 60 s, or a third of a stream under 3 minutes::

    step_last_over_first      median DiT + decode ms, last window / first window (goal <= 1.05)
    memory_last_over_first    most bytes allocated after a step, last window / first
    reserved_last_over_first  most bytes reserved during a step, last window / first

and the series hold every step (against the second of video it starts at) and one point per
window-long span of video (per minute on a full run), for the plot.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from framestream.evals.bench.generation import PROMPTS, build_pipeline
from framestream.evals.bench.loaders import ModelShelf, release_memory
from framestream.evals.bench.memory import process_memory
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.timing import Clock, percentiles
from framestream.evals.bench.variants import OURS, VariantSpec
from framestream.stream.pipelines.wan import WanStreamPipeline
from framestream.stream.requests import GenerationRequest

__all__ = ["GOAL", "LongStreamSettings", "run_long_stream", "window_seconds"]

GOAL = 1.05  # last window over first, for step time and memory
_MINUTE = 60.0


@dataclass(frozen=True)
class LongStreamSettings:
    seconds: float  # of video
    switch_every: float  # seconds of video between prompt switches
    warmup: int  # first steps left out of the first window
    size: tuple[int, int]  # (height, width) in pixels

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and self.switch_every > 0 and self.warmup >= 0):
            raise ValueError(f"need seconds > 0, switch_every > 0 and warmup >= 0: {self}")


def window_seconds(seconds: float) -> float:
    """The span compared at each end of a stream: a minute, or a third of a shorter stream."""
    return min(_MINUTE, seconds / 3)


@dataclass
class _Steps:
    """What was read at each step."""

    start: list[float] = field(default_factory=list)  # second of video the step begins at
    dit: list[float] = field(default_factory=list)  # ms
    decode: list[float] = field(default_factory=list)  # ms
    held: list[int] = field(default_factory=list)  # bytes allocated after the step
    peak: list[int] = field(default_factory=list)  # bytes reserved during the step, most
    switched: list[bool] = field(default_factory=list)

    @property
    def step_ms(self) -> list[float]:
        return [a + b for a, b in zip(self.dit, self.decode, strict=True)]


def run_long_stream(
    shelf: ModelShelf, settings: LongStreamSettings, spec: VariantSpec
) -> Iterator[tuple[str, Workload]]:
    """Yield the one workload, ``longlive_long``, once the stream has run."""
    models = shelf.wan
    pipe = build_pipeline("longlive", models, spec, settings.size)
    try:
        steps = _run(pipe, settings, Clock(models.device))
    finally:
        del pipe
        release_memory(models.device)
    height, width = settings.size
    window = window_seconds(settings.seconds)
    config = {
        "preset": shelf.target.preset,
        "size": f"{width}x{height}",
        "dtype": str(models.dtype).removeprefix("torch."),
        "seconds": settings.seconds,
        "switch_every": settings.switch_every,
        "warmup": settings.warmup,
        "window_seconds": window,
        "steps": len(steps.dit),
        "switches": sum(steps.switched),
        "goal": GOAL,
        "memory": "cuda allocated / reserved" if models.device.type == "cuda" else "process RSS",
    }
    minutes = f"{settings.seconds / _MINUTE:.3g}-minute"
    title = f"LongLive, one {minutes} stream ({shelf.target.preset}, {width}x{height})"
    variant = _summarise(steps, settings, spec.description)
    yield "longlive_long", Workload(title, config, {OURS: variant}, OURS)


def _run(pipe: WanStreamPipeline, settings: LongStreamSettings, clock: Clock) -> _Steps:
    height, width = settings.size
    device, fps = pipe.models.device, pipe.config.fps
    total = math.ceil(settings.seconds * fps)
    state = pipe.open(GenerationRequest(PROMPTS[0], 0, height, width))
    steps, switches = _Steps(), 0
    bar = tqdm(total=total, desc="long stream: frames", unit="frame", leave=False, disable=None)
    try:
        while state.frames_emitted < total:
            video = state.frames_emitted / fps
            switch = video >= (switches + 1) * settings.switch_every
            if switch:  # at the step boundary the switch falls in, as a switch at t= does
                switches += 1
                pipe.switch_prompt(state, f"{PROMPTS[switches % len(PROMPTS)]}, take {switches}")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = clock.now()
            latents = pipe.denoise(state)
            middle = clock.now()
            chunk = pipe.decode(state, latents)
            steps.decode.append(clock.now() - middle)
            steps.dit.append(middle - start)
            held, peak = process_memory(device)
            steps.start.append(video)
            steps.held.append(held)
            steps.peak.append(peak)
            steps.switched.append(switch)
            bar.update(len(chunk))
    finally:
        bar.close()
        pipe.close(state)
    return steps


def _summarise(steps: _Steps, settings: LongStreamSettings, description: str) -> Variant:
    """The figures and series of a long stream's steps (see the module's docstring)."""
    window = window_seconds(settings.seconds)
    end = settings.seconds
    measured = range(min(settings.warmup, len(steps.dit) - 1), len(steps.dit))
    first = [i for i in measured if steps.start[i] < steps.start[measured[0]] + window]
    last = [i for i in measured if steps.start[i] >= end - window] or [measured[-1]]
    step_ms = steps.step_ms
    variant = Variant(description)
    add = variant.add_figure

    def ratio(values: Sequence[float], pick: Callable[[list[float]], float]) -> float | None:
        early = pick([values[i] for i in first])
        return None if early == 0 else pick([values[i] for i in last]) / early

    step_ratio = ratio(step_ms, statistics.median)
    memory_ratio = ratio(steps.held, max)
    reserved_ratio = ratio(steps.peak, max)
    add("step_last_over_first", step_ratio, "ratio", "DiT + decode ms, last window / first")
    add("memory_last_over_first", memory_ratio, "ratio", "memory held, last window / first")
    add("reserved_last_over_first", reserved_ratio, "ratio", "memory peak, last window / first")
    add(
        "within_goal",
        all(r is not None and r <= GOAL for r in (step_ratio, memory_ratio, reserved_ratio)),
        "bool",
        f"every last / first ratio <= {GOAL}",
    )
    steady = [step_ms[i] for i in measured]
    for p, value in percentiles(steady).items():
        add(f"step_ms_p{p}", value, "ms", f"DiT + decode per step, p{p}")
    add("dit_ms", statistics.median(steps.dit[measured[0] :]), "ms", "DiT per step, median")
    add("decode_ms", statistics.median(steps.decode[measured[0] :]), "ms", "decode per step")
    add("memory_bytes", max(steps.held), "bytes", "memory held after a step, most")
    add("peak_bytes", max(steps.peak), "bytes", "memory peak during a step, most")
    variant.series = {
        "step_ms": Series("DiT + decode per step", "ms", "second of video", steps.start, step_ms),
        "memory_bytes": Series(
            "memory held after a step", "bytes", "second of video", steps.start, steps.held
        ),
        **_per_span(steps, window, measured[0]),
    }
    return variant


def _per_span(steps: _Steps, window: float, skip: int) -> dict[str, Series]:
    """One point per ``window`` seconds of video: the median step, the most memory."""
    spans: dict[int, list[int]] = {}
    for i in range(skip, len(steps.dit)):
        spans.setdefault(int(steps.start[i] // window), []).append(i)
    x = sorted(spans)
    what = "minute of video" if window == _MINUTE else f"{window:.3g} s of video"
    step_ms = steps.step_ms
    return {
        "step_ms_per_span": Series(
            f"DiT + decode per step, median per {what}",
            "ms",
            what,
            x,
            [statistics.median(step_ms[i] for i in spans[k]) for k in x],
        ),
        "memory_bytes_per_span": Series(
            f"memory held, most per {what}",
            "bytes",
            what,
            x,
            [max(steps.held[i] for i in spans[k]) for k in x],
        ),
        "peak_bytes_per_span": Series(
            f"memory peak during a step, most per {what}",
            "bytes",
            what,
            x,
            [max(steps.peak[i] for i in spans[k]) for k in x],
        ),
    }
