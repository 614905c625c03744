"""The published loops as a variant of the generation workload (``--baselines published``).

The published LongLive (NVlabs/LongLive ``v1.0``, ``pipeline/interactive_causal_inference.py``)
and Rolling Forcing (TencentARC/RollingForcing, ``pipeline/rolling_forcing_inference.py``)
loops run from checkouts the user names (imported by :func:`evals.fidelity.published.checkout`,
never copied here), in this process, beside ours, at the run's preset, size and dtype:

* their ``CausalWanModel`` at our DiT's geometry, holding our DiT's weights (the original Wan
  names, loaded strictly), wrapped in their ``WanDiffusionWrapper`` (shift 5);
* their ``WanVAE_`` at our VAE's geometry, holding our VAE's weights renamed by diffusers'
  ``convert_wan_vae_to_diffusers`` where that renaming covers the layout (Wan2.1's, so at full
  size), else their own initialisation (said in the variant's description): speed does not
  depend on the values;
* our text encoder behind their ``text_encoder(text_prompts=...)`` interface;
* their settings (:func:`evals.fidelity.longlive.published_args`,
  :func:`evals.fidelity.rolling_forcing.published_args`); where the model is not the 1.3B at
  832x480 (tests), the sizes their code hard-codes for it are set to the model's (frame
  length, layer count, KV buffers: :func:`evals.fidelity.wan.fit_kv_cache`); at full size these
  are the values they already hold;
* attention: without flash-attn (the device image has none) their self-attention takes their
  own SDPA fallback (``attention`` in ``wan/modules/attention.py``, in the run's dtype), and
  their cross-attention, which calls ``flash_attention`` directly (it asserts flash-attn), is
  routed to that same fallback; with flash-attn installed, their code runs as published.

Their loop is one call that generates a whole video. It runs in a worker thread that stops at
each step boundary (hooks on their generator, ``_recache_after_switch`` and ``decode_to_pixel``)
until the bench resumes it, so it is timed a step at a time, interleaved with our variants like
any other. The host clock is read with the device drained, as for ours. Figures, under the same
names as ours where the meaning is the same:

    dit_ms            median over the steps after ``--warmup`` of one step of their loop:
                      LongLive a chunk (4 denoising passes and the clean-context pass);
                      Rolling Forcing a window pass and its clean-cache pass, the first step
                      being their ramp-up (windows 0 to 4), as ours is. As ours: DiT only
    fps_dit           12 frames / dit_ms
    decode_ms         their loop decodes once, at the end of the video
                      (``decode_to_pixel(use_cache=False)`` over every latent frame); that call's
                      time x 12 / the frames it decoded. Ours decodes each step as it streams
    fps               12 frames / (dit_ms + decode_ms)
    first_frame_ms    their loop called on a fresh video -> its first step done (prompt
                      encoding, cache allocation, the first chunk, or the ramp-up to the first
                      final block), plus their ``decode_to_pixel(use_cache=False)`` of that
                      chunk's latents (their loop would decode only at the end of the video)
    switch_stall_ms   LongLive only: their ``_recache_after_switch`` call and the chunk after
                      it, minus their steady dit_ms, with the spread rule of ours. Their loop
                      encodes every prompt when it starts, so unlike ours a switch pays no text
                      encoding (a one-layer encoder at full size)
    cache_bytes       their self-attention KV buffers (every layer's k and v), allocated whole
    late_over_early   dit_ms of the last third of the steady steps over the first third

Rolling Forcing's loop has no prompt switch and LongLive's no decode beside the next chunk, so
``switch_stall_ms``, ``switch_to_frame_ms`` and ``fps_overlap`` are absent, as are the per-step
``step_ms_pNN`` (their decode is not per step). The steps of Rolling Forcing's ramp-down (the
window running out at the end of a video, which a stream never does) are run, untimed.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

from framestream.evals.bench.pausing import PausingRun
from framestream.evals.bench.published_models import (
    at_published_sizes,
    fit_sizes,
    their_dit,
    their_pipeline,
    their_vae,
)
from framestream.evals.bench.record import Series, Variant
from framestream.evals.bench.timing import Clock, difference, late_over_early
from framestream.evals.bench.variants import VariantSpec
from framestream.evals.fidelity import longlive, rolling_forcing
from framestream.evals.fidelity.published import (
    attention_everywhere,
    checkout,
    commit_of,
    quiet,
)
from framestream.evals.fidelity.wan import (
    WAN_STUBS,
)
from framestream.models.registry import WanModels

__all__ = ["LOOPS", "PublishedLoop", "PublishedStream", "check_checkout", "published_stream"]

# latent frames a step emits; both loops: 3
_STEP_LATENTS = 3
# Rolling Forcing's window, in blocks: one per denoising step
_WINDOW_BLOCKS = len(rolling_forcing.STEPS)


@dataclass(frozen=True)
class PublishedLoop:
    """What the bench needs to know of one published repository."""

    repository: str
    loop_file: str  # relative to the checkout: present in every checkout of it
    modules: tuple[str, ...]  # the loop's module first, then those binding attention


LOOPS = {
    "longlive": PublishedLoop(
        "NVlabs/LongLive (v1.0)", "pipeline/interactive_causal_inference.py", longlive.MODULES
    ),
    "rolling_forcing": PublishedLoop(
        "TencentARC/RollingForcing",
        "pipeline/rolling_forcing_inference.py",
        rolling_forcing.MODULES,
    ),
}
# imported beside the loop: their VAE wrapper and model, and the attention functions
_MORE_MODULES = ("utils.wan_wrapper", "wan.modules.vae", "wan.modules.attention")


def check_checkout(kind: str, path: Path | None) -> Path:
    """``path`` as a checkout of the repository of ``kind``; ``ValueError`` saying what is
    wrong (no path, no folder, not that repository)."""
    loop = LOOPS[kind]
    flag = f"--published-{kind.replace('_', '-')}"
    if path is None:
        raise ValueError(
            f"--baselines published needs {flag} PATH, a checkout of {loop.repository}"
        )
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{flag}: no checkout at {path}")
    if not (path / loop.loop_file).is_file():
        raise ValueError(f"{flag}: {path} has no {loop.loop_file}; is it {loop.repository}?")
    return path


class _Marks:
    """Where a step of the published loop begins, found from the calls its loop makes: the
    hooks call :meth:`at` with a label ("step", "switch", "ramp-down", "decode")."""

    def __init__(self) -> None:
        self.run: PausingRun | None = None
        self.calls = 0  # generator calls of the run, cache passes left out
        self.recaching = False
        self.switched = False  # a recache has just begun this chunk
        self.blocks = 0  # Rolling Forcing: blocks of the run's video
        self.latest: torch.Tensor | None = None  # the latest final latents [B, 3, C, h, w]

    def reset(self, run: PausingRun, blocks: int) -> None:
        self.run, self.calls, self.blocks = run, 0, blocks
        self.recaching = self.switched = False
        self.latest = None

    def at(self, label: str) -> None:
        self.run.pause(label)


def _hook_longlive(pipeline, marks: _Marks) -> None:
    """A LongLive chunk is ``len(steps)`` denoising calls then one clean-context call; a step
    begins at a chunk's first call, or at the recache before it."""
    generate, recache = pipeline.generator.forward, pipeline._recache_after_switch
    per_chunk = len(pipeline.denoising_step_list) + 1

    def forward(*args, **kwargs):
        if marks.recaching:
            return generate(*args, **kwargs)
        index = marks.calls % per_chunk
        marks.calls += 1
        if index == 0 and not marks.switched:
            marks.at("step")
        marks.switched = False
        out = generate(*args, **kwargs)
        if index == per_chunk - 2:  # the last denoising call: the chunk's latents
            marks.latest = out[1]
        return out

    def recache_after_switch(*args, **kwargs):
        marks.at("switch")
        marks.recaching = True
        try:
            return recache(*args, **kwargs)
        finally:
            marks.recaching, marks.switched = False, True

    pipeline.generator.forward = forward
    pipeline._recache_after_switch = recache_after_switch


def _hook_rolling_forcing(pipeline, marks: _Marks) -> None:
    """A Rolling Forcing window is one window call then one clean-cache call
    (``updating_cache=True``); step 0 is windows 0 to 4 (the ramp-up), then a step a window;
    the windows from the video's last block on are its ramp-down."""
    generate = pipeline.generator.forward

    def forward(*args, **kwargs):
        if kwargs.get("updating_cache"):
            return generate(*args, **kwargs)
        window = marks.calls
        marks.calls += 1
        if window == 0 or window >= _WINDOW_BLOCKS:
            marks.at("step" if window < marks.blocks else "ramp-down")
        out = generate(*args, **kwargs)
        marks.latest = out[1][:, :_STEP_LATENTS]  # the window's oldest block
        return out

    pipeline.generator.forward = forward


def _hook_decode(pipeline, marks: _Marks) -> Callable:
    """The loop's decode becomes a step boundary; returns their undecorated decode."""
    decode = pipeline.vae.decode_to_pixel

    def decode_to_pixel(*args, **kwargs):
        marks.at("decode")
        return decode(*args, **kwargs)

    pipeline.vae.decode_to_pixel = decode_to_pixel
    return decode


class PublishedStream:
    """The published loop of one pipeline, driven a step at a time with the interface of the
    generation workload's streams (see the module docstring for each figure)."""

    def __init__(
        self,
        kind: str,
        pipeline: torch.nn.Module,
        spec: VariantSpec,
        checkout: tuple[str, str | None],
        models: WanModels,
        settings,
        clock: Clock,
        prompts: Callable[[], str],
    ) -> None:
        self.kind, self.pipe, self.spec, self.settings = kind, pipeline, spec, settings
        self.description, self.commit = checkout  # what ran, and the checkout's commit
        self._models, self._clock, self._prompts = models, clock, prompts
        self._marks = _Marks()
        if kind == "longlive":
            _hook_longlive(pipeline, self._marks)
        else:
            _hook_rolling_forcing(pipeline, self._marks)
        self._decode = _hook_decode(pipeline, self._marks)
        self._run: PausingRun | None = None
        self._label: str | None = None  # where the run is paused
        self.dit: list[float] = []
        self.switch_dit: list[float] = []
        self.first_frame: list[float] = []
        self.decode_ms: float | None = None
        self.decoded_frames = 0
        self.cache_bytes = 0

    # the workload's interface

    def warm_up(self) -> None:
        """A short whole video (with a switch, for LongLive), untimed, so their first measured
        step does not pay the process's one-time costs (kernel plans, allocator)."""
        if self.kind == "longlive":
            run = self._start(chunks=3, switches_at=(2,))
        else:
            run = self._start(chunks=_WINDOW_BLOCKS + 1)
        while not run.done:
            run.resume()

    def open(self) -> None:
        settings = self.settings
        if self.kind == "longlive":
            switches = range(settings.chunks, settings.chunks + settings.switches)
            self._run = self._start(settings.chunks + settings.switches, tuple(switches))
        else:  # step 0 is 5 windows: the steps end at the last block's window, then ramp-down
            self._run = self._start(settings.chunks + _WINDOW_BLOCKS - 1)
        self._label = "step"
        self.cache_bytes = self._cache_bytes()

    def step(self) -> None:
        self.dit.append(self._timed({"step", "switch", "ramp-down"}))

    def overlapped(self, steps: int) -> None:
        """Their loop decodes at the end of a video, never beside the next chunk."""

    def switch(self) -> None:
        if self.kind == "longlive":  # Rolling Forcing's loop takes one prompt a video
            self.switch_dit.append(self._timed({"switch", "decode"}))

    def close(self) -> None:
        run = self._run
        while self._label != "decode":  # Rolling Forcing's ramp-down, untimed
            self._label = run.resume()
            if self._label is None:
                raise RuntimeError("the published loop ended without decoding")
        start = self._clock.now()
        run.resume()
        self.decode_ms = self._clock.now() - start
        self.decoded_frames = run.result.shape[1]  # [B, frames, 3, H, W]
        self._run = None

    def new_session(self) -> None:
        start = self._clock.now()
        run = self._start(1 if self.kind == "longlive" else _WINDOW_BLOCKS)
        try:
            run.resume()  # to the end of the first step
            with torch.no_grad():
                self._decode(self._marks.latest, use_cache=False)
            self.first_frame.append(self._clock.now() - start)
        finally:
            run.abort()

    def summary(self) -> Variant:
        steady = slice(self.settings.warmup, None)
        per_step = 4 * _STEP_LATENTS  # the Wan VAE's temporal stride
        dit = statistics.median(self.dit[steady])
        variant = Variant(self.description)
        add = variant.add_figure
        add("dit_ms", dit, "ms", "DiT per step of their loop, median")
        add("frames_per_step", per_step, "frames", "video frames per steady step")
        add("fps_dit", 1e3 * per_step / dit, "fps", "frames/s of their DiT alone")
        if self.decode_ms is not None:
            decode = self.decode_ms * per_step / self.decoded_frames
            add("decode_ms", decode, "ms", "their end-of-video decode, per 12 frames")
            add("fps", 1e3 * per_step / (dit + decode), "fps", "frames/s, decode in series")
        add(
            "first_frame_ms",
            statistics.median(self.first_frame),
            "ms",
            "their loop on a fresh video to its first step, plus that chunk's decode, median",
        )
        if self.switch_dit:
            variant.add_difference(
                "switch_stall_ms",
                difference(self.switch_dit, self.dit[steady]),
                "ms",
                "their recache call and the chunk after it, minus their steady step, median",
            )
        add("cache_bytes", self.cache_bytes, "bytes", "their KV buffers, allocated whole")
        add(
            "late_over_early",
            late_over_early(self.dit[steady]),
            "ratio",
            "DiT per step, last third of the steady steps over the first third",
        )
        steps = list(range(len(self.dit)))
        variant.series = {
            "dit_ms": Series("DiT per step", "ms", "step", steps, self.dit),
            "first_frame_ms": Series(
                "new session to its first frame",
                "ms",
                "session",
                list(range(len(self.first_frame))),
                self.first_frame,
            ),
        }
        return variant

    def abort(self) -> None:
        """End a run left paused (a workload cut short)."""
        if self._run is not None:
            self._run.abort()
            self._run = None

    # their loop

    def _start(self, chunks: int, switches_at: tuple[int, ...] = ()) -> PausingRun:
        """Their loop on a fresh video of ``chunks`` chunks (blocks), switching prompts before
        each chunk of ``switches_at`` (LongLive), run to its first pause."""
        models = self._models
        height, width = self.settings.size
        stride = models.vae.spatial_stride
        shape = (1, chunks * _STEP_LATENTS, 16, height // stride, width // stride)
        noise = torch.randn(shape, device=models.device, dtype=models.dtype)
        if self.kind == "longlive":
            prompts = [[self._prompts()] for _ in range(1 + len(switches_at))]
            indices = [_STEP_LATENTS * c for c in switches_at]

            def loop():
                return self.pipe.inference(
                    noise, text_prompts_list=prompts, switch_frame_indices=indices
                )
        else:
            prompt = [self._prompts()]

            def loop():
                return self.pipe.inference_rolling_forcing(noise, prompt)

        run = PausingRun(loop)
        self._marks.reset(run, chunks)
        run.start()
        return run

    def _timed(self, expected: set[str]) -> float:
        """Milliseconds to the next pause, which must be one of ``expected``."""
        start = self._clock.now()
        self._label = self._run.resume()
        elapsed = self._clock.now() - start
        if self._label not in expected:
            raise RuntimeError(
                f"the published loop stopped at {self._label!r}, not {sorted(expected)}"
            )
        return elapsed

    def _cache_bytes(self) -> int:
        cache = self.pipe.kv_cache1 if self.kind == "longlive" else self.pipe.kv_cache_clean
        buffers = [t for layer in cache for t in (layer["k"], layer["v"])]
        return sum(t.numel() * t.element_size() for t in buffers)


@contextlib.contextmanager
def published_stream(
    kind: str,
    path: Path,
    spec: VariantSpec,
    models: WanModels,
    settings,
    clock: Clock,
    prompts: Callable[[], str],
) -> Iterator[PublishedStream]:
    """The published loop of ``kind`` from the checkout at ``path``, built on ``models``;
    the checkout's modules stay imported for the block."""
    loop = LOOPS[kind]
    modules = (*loop.modules, *_MORE_MODULES)
    with contextlib.ExitStack() as stack:
        imported = stack.enter_context(checkout(path, modules, WAN_STUBS))
        named = dict(zip(modules, imported, strict=True))
        dit_model = their_dit(kind, named["wan.modules.causal_model"], models)
        vae, vae_note = their_vae(named["utils.wan_wrapper"], named["wan.modules.vae"], models)
        with quiet():
            pipeline = their_pipeline(kind, named[loop.modules[0]], dit_model, vae, models)
        fit_sizes(kind, pipeline, named["wan.modules.causal_model"], models, settings.size)
        attention = named["wan.modules.attention"]
        if attention.FLASH_ATTN_2_AVAILABLE or attention.FLASH_ATTN_3_AVAILABLE:
            attention_note = "flash-attn, their default path"
        else:
            fallback = functools.partial(attention.attention, dtype=models.dtype)
            stack.enter_context(
                attention_everywhere(
                    fallback, named["wan.modules.causal_model"], named["wan.modules.model"]
                )
            )
            attention_note = (
                "their SDPA fallback (flash-attn absent), the cross-attention's flash_attention "
                "call routed to it too"
            )
        for module in _printing_modules(pipeline, path):  # their loops print every window
            stack.enter_context(mock.patch.object(module, "print", _silent, create=True))
        commit = commit_of(path)
        sizes = (
            "theirs" if at_published_sizes(models, settings.size) else "their 1.3B ones set to ours"
        )
        description = (
            f"the published loop: {loop.repository} at {commit or 'an unknown commit'}, "
            f"{loop.loop_file}, in this process on our DiT's weights and text encoder; VAE "
            f"{vae_note}; attention: {attention_note}; sizes: {sizes}; decode at the end of "
            "the video, as their loop does"
        )
        stream = PublishedStream(
            kind, pipeline, spec, (description, commit), models, settings, clock, prompts
        )
        try:
            yield stream
        finally:
            stream.abort()


def _printing_modules(pipeline: torch.nn.Module, path: Path) -> list[ModuleType]:
    """The checkout's modules defining the pipeline's classes."""
    root = str(Path(path).resolve())
    found = []
    for cls in type(pipeline).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and root in str(getattr(module, "__file__", "")):
            found.append(module)
    return found


def _silent(*args, **kwargs) -> None:
    """Their ``print``, while they run."""
