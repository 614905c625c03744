"""What the Wan generation pipelines share: a pool per DiT geometry, per-stream text state with
prompt switches and transitions, noise, plans, the streamed VAE decode, and a restyle stream's
input (frames in slots, the streamed VAE encode, the strength).

A pipeline subclass says how a stream's cache is laid out (``_cache_config``) and how a step
runs (``denoise``); everything a stream owns lives in its :class:`WanStreamState`.

A restyle stream (``GenerationRequest.restyle``) takes input frames (:meth:`push_frame`) into
slots at the pipeline's fps (:mod:`stream.pipelines.restyle`); a step runs only once its input
is in (:meth:`input_ready`), encodes it chunk by chunk with the causal VAE encoder, and its
frames carry their input slots' indices and arrival times::

    push_frame -> slots [9 | 12 | 12 ...] -> encode_chunk -> z_in -> denoise (levels over the
    strength take z_in as x0) -> decode_chunk -> frames, first_index = the slots' first
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from framestream.models.attention import AttentionContext
from framestream.models.registry import WanModels
from framestream.models.schedule import FlowSchedule
from framestream.models.vae import WanVAE, from_uint8, to_uint8
from framestream.models.wan import TextConditioning
from framestream.stream.kvcache import (
    CacheGeometry,
    CacheView,
    KVCacheManager,
    Policy,
    PolicyConfig,
    SequencePlan,
    TokenRange,
    build_step,
    cache_dtype,
)
from framestream.stream.pipelines.base import FrameChunk, PendingChunk
from framestream.stream.pipelines.restyle import InputSlots, NotRestyleError, RestyleState
from framestream.stream.requests import GenerationRequest, RestyleRequest
from framestream.stream.scheduler import StepCost

__all__ = ["WanCalibration", "WanStreamPipeline", "WanStreamState"]


@dataclass(frozen=True, slots=True)
class WanCalibration:
    """A warm step at the preset's default size, timed on this device."""

    dit_seconds: float  # the DiT's passes
    decode_seconds: float  # the streamed VAE decode of its latents
    frames: int  # video frames the step made
    encode_seconds: float | None = None  # a restyle step's input encode; None: cannot encode


@dataclass(eq=False)
class WanStreamState:
    """Everything one stream owns; nothing of it lives on the shared modules."""

    cache: Policy
    latent_shape: tuple[int, int, int]  # (channels, h, w) of one latent frame
    generator: torch.Generator
    embedding: torch.Tensor  # [1, L, text_dim] text embedding of the current prompt
    text: TextConditioning  # cross-attention K/V of the current prompt
    decode_state: object
    prompt: str
    frames_emitted: int = 0
    transition: list[torch.Tensor] = field(default_factory=list)  # embeddings of coming steps
    recache_pending: bool = False
    restyle: RestyleState | None = None  # a restyle stream's input; None: plain generation


class WanStreamPipeline(ABC):
    """Base of the Wan generation pipelines.

    Args:
        models: the DiT, the streaming VAE and the text encoder (with its prompt cache).
        manager: the device's cache manager; a pool for the DiT's geometry is added if missing.
        cache_bytes: capacity of that pool when it is created here.
        block_size: tokens per block of that pool; one latent frame at the default size when
            None (a frame per block keeps eviction exact and waste at zero).
    """

    # the subclass's frozen config; has fps, attention_backend, kv_cache_dtype, max_input_frames
    config: object
    kind = "generation"
    calibration: WanCalibration | None = None  # set by calibrate()

    def __init__(
        self,
        models: WanModels,
        manager: KVCacheManager,
        cache_bytes: int,
        block_size: int | None,
    ) -> None:
        self.models = models
        self.manager = manager
        self._decode_stream: torch.cuda.Stream | None = None  # created at the first CUDA decode
        cfg = models.dit.config
        dtype = cache_dtype(self.config.kv_cache_dtype, models.dtype)
        self.geometry = CacheGeometry(
            cfg.num_layers, cfg.num_heads, cfg.head_dim, dtype, str(models.device)
        )
        try:
            self.pool = manager.pool(self.geometry)
        except ValueError:
            rows, cols = models.token_grid(*models.default_size)
            self.pool = manager.add_pool(self.geometry, block_size or rows * cols, cache_bytes)
        most = self._input_chunks_most() + 1  # a step's input and the chunk arriving behind it
        if self.config.max_input_frames < most * self.chunk_input_frames:
            raise ValueError(
                f"max_input_frames={self.config.max_input_frames} must hold {most} chunks of "
                f"input ({self.chunk_input_frames} frames each)"
            )

    @property
    def chunk_input_frames(self) -> int:
        """Input frames of a chunk after a stream's first (12): what its latents decode to."""
        return self.models.vae.temporal_stride * self._chunk_latent_frames()

    @abstractmethod
    def _cache_config(self, grid: tuple[int, int]) -> PolicyConfig:
        """The cache policy of one stream whose latent frames are ``grid`` tokens."""

    @abstractmethod
    def denoise(self, state: WanStreamState) -> torch.Tensor:
        """Run the stream's next step; returns the clean latents ``[1, C, T, h, w]`` it emits."""

    @abstractmethod
    def _new_state(self, **fields) -> WanStreamState:
        """The pipeline's state for a stream opened with ``fields``."""

    @abstractmethod
    def _passes(self) -> list[tuple[int, int]]:
        """A steady step's DiT passes as (query frames, key frames), for :meth:`step_cost`."""

    @abstractmethod
    def _chunk_latent_frames(self) -> int:
        """Latent frames a step emits (and a restyle stream encodes at a time)."""

    def _input_chunks(self, state: WanStreamState) -> int:
        """Input chunks a restyle stream's next step takes (LongLive: its own)."""
        return 1

    def _input_chunks_most(self) -> int:
        """The most input chunks one step can take."""
        return 1

    # -- what a step costs -----------------------------------------------------------------

    def calibrate(self, steps: int = 3) -> None:
        """Time ``steps`` steps at the default size, the DiT and the decode apart, after a first
        step (which pays the kernels' compilation and planning), for :meth:`step_cost`. The
        fastest of them counts: what else the machine did meanwhile only slows a step."""
        state = self.open(GenerationRequest("calibration"))
        dit, decode, frames = [], [], 0
        try:
            self.step(state)
            for _ in range(steps):
                start = time.perf_counter()
                latents = self.denoise(state)
                if latents.is_cuda:
                    torch.cuda.synchronize(latents.device)
                middle = time.perf_counter()
                frames = len(self.decode(state, latents))  # on the host when it returns
                dit.append(middle - start)
                decode.append(time.perf_counter() - middle)
        finally:
            self.close(state)
        self.calibration = WanCalibration(min(dit), min(decode), frames, self._time_encode(steps))

    def _time_encode(self, steps: int) -> float | None:
        """The fastest of ``steps`` encodes of a later chunk's input at the default size, after
        a stream's first chunk; None where the decoder has no encoder."""
        vae = self.models.vae
        if not isinstance(vae, WanVAE):
            return None
        height, width = self.models.default_size
        first, later = self.chunk_input_frames - vae.temporal_stride + 1, self.chunk_input_frames
        video = torch.zeros((1, 3, first + steps * later, height, width), device=self.models.device)
        encode_state, times = vae.new_encode_state(), []
        vae.encode_chunk(video[:, :, :first], encode_state)
        for i in range(steps):
            start = time.perf_counter()
            chunk = video[:, :, first + i * later : first + (i + 1) * later]
            z = vae.encode_chunk(chunk, encode_state)
            if z.is_cuda:
                torch.cuda.synchronize(z.device)
            times.append(time.perf_counter() - start)
        return min(times)

    def step_cost(self, request: GenerationRequest) -> StepCost | None:
        """A step of ``request``'s size on this device: the calibrated step scaled by the DiT's
        multiply-adds and the decode's pixels; None before :meth:`calibrate`."""
        calibration = self.calibration
        if calibration is None:
            return None
        default = self.models.default_size
        size = (request.height or default[0], request.width or default[1])
        dit = calibration.dit_seconds * self._dit_work(*size) / self._dit_work(*default)
        pixels = (size[0] * size[1]) / (default[0] * default[1])
        seconds = dit + calibration.decode_seconds * pixels
        if request.restyle is not None and calibration.encode_seconds is not None:
            # the DiT's share is plain generation's: a strength can rise to 1.0 mid-stream
            seconds += calibration.encode_seconds * pixels
        return StepCost(seconds, calibration.frames / self.config.fps)

    def _dit_work(self, height: int, width: int) -> float:
        """Multiply-adds of a steady step's DiT passes (projections, feed-forward, attention
        to the text and to the frames' keys) at ``height`` x ``width``."""
        rows, cols = self.models.token_grid(height, width)
        tokens, cfg = rows * cols, self.models.dit.config
        per_token = 6 * cfg.dim**2 + 2 * cfg.dim * cfg.ffn_dim + 2 * cfg.dim * cfg.text_len
        work = sum(
            q * tokens * per_token + 2 * q * tokens * kv * tokens * cfg.dim
            for q, kv in self._passes()
        )
        return cfg.num_layers * work

    # -- session lifecycle -----------------------------------------------------------------

    def open(self, request: GenerationRequest) -> WanStreamState:
        """Admit a stream (raises ``CacheFullError`` when its cache does not fit, ValueError
        for a restyle request where the decoder has no encoder)."""
        height = request.height or self.models.default_size[0]
        width = request.width or self.models.default_size[1]
        latent_shape = self.models.latent_shape(height, width)
        restyle = None
        if request.restyle is not None:
            restyle = self._new_restyle(request.restyle, height, width)
        cache = self.manager.open(
            self.geometry, self._cache_config(self.models.token_grid(height, width))
        )
        try:
            embedding = self.models.encode_prompt(request.prompt)
            return self._new_state(
                cache=cache,
                latent_shape=latent_shape,
                generator=torch.Generator(self.models.device).manual_seed(request.seed),
                embedding=embedding,
                text=self.models.dit.encode_text(embedding),
                decode_state=self.models.vae.new_decode_state(),
                prompt=request.prompt,
                restyle=restyle,
            )
        except BaseException:
            cache.cache.close()
            raise

    def _new_restyle(self, request: RestyleRequest, height: int, width: int) -> RestyleState:
        vae = self.models.vae
        if not isinstance(vae, WanVAE):
            raise ValueError(
                "restyle needs the Wan VAE's encoder; this pipeline decodes with the tiny "
                "decoder, which has none"
            )
        later = self.chunk_input_frames
        slots = InputSlots(
            self.config.fps,
            height,
            width,
            self.config.max_input_frames,
            first_chunk=later - vae.temporal_stride + 1,
            chunk=later,
        )
        return RestyleState(request.strength, slots, vae.new_encode_state())

    def close(self, state: WanStreamState) -> None:
        state.cache.cache.close()

    def switch_prompt(self, state: WanStreamState, prompt: str, transition_chunks: int = 0) -> None:
        """Switch at the next step; ``transition_chunks`` > 0 blends the text over that many."""
        if transition_chunks < 0:
            raise ValueError(f"transition_chunks must be >= 0, got {transition_chunks}")
        target = self.models.encode_prompt(prompt)
        start = state.embedding
        steps = max(transition_chunks, 1)
        state.transition = [torch.lerp(start, target, (i + 1) / steps) for i in range(steps)]
        state.prompt = prompt
        state.recache_pending = True

    # -- a restyle stream's input ---------------------------------------------------------

    def push_frame(
        self,
        state: WanStreamState,
        timestamp: float,
        frame: np.ndarray,
        arrival: float | None = None,
    ) -> None:
        """Feed a restyle stream one uint8 ``[H, W, 3]`` input frame of any size.

        Args:
            timestamp: seconds on the input's own clock, non-decreasing.
            arrival: ``time.monotonic()`` when it arrived (now when None), for latency.

        Raises:
            NotRestyleError: the stream is not a restyle stream.
            InputError: not a uint8 ``[H, W, 3]`` frame, or a bad timestamp;
                :class:`~stream.pipelines.feed.TimestampsBackwardsError` when it is older than
                the frame before it.
        """
        if state.restyle is None:
            raise NotRestyleError("this generation session takes no input frames")
        arrival = time.monotonic() if arrival is None else arrival
        state.restyle.slots.push(timestamp, frame, arrival)

    def input_ready(self, state: WanStreamState) -> bool:
        """Whether the next step can run: always for plain generation; for a restyle stream,
        once the input slots it takes are all in."""
        if state.restyle is None:
            return True
        return state.restyle.slots.ready(self._input_chunks(state))

    def input_arrival(self, state: WanStreamState) -> float | None:
        """``time.monotonic()`` when the next step's input became complete; None while it is
        not (or for plain generation, which takes none)."""
        if state.restyle is None:
            return None
        return state.restyle.slots.completed_at(self._input_chunks(state))

    def input_lead_frames(self, strength: float) -> int:
        """Input frames a restyle stream at ``strength`` takes in beyond the frames it has
        output, at most: a client that sends a file must keep at least this much (and the chunk
        after it) ahead of what it received, or the stream waits for input that never comes.
        A LongLive step restyles the chunk it takes in."""
        return self.chunk_input_frames

    def set_strength(self, state: WanStreamState, strength: float) -> None:
        """A restyle stream's new strength, from its next step on.

        Raises:
            NotRestyleError: the stream is not a restyle stream.
            ValueError: ``strength`` not in (0, 1].
        """
        if state.restyle is None:
            raise NotRestyleError("this generation session is not a restyle session")
        state.restyle.strength = RestyleRequest(float(strength)).strength

    def _take_input(self, state: WanStreamState) -> torch.Tensor:
        """Encode the next input chunk of a restyle stream: ``[1, C, T, h, w]`` normalised
        latents in the model's dtype; its indices and arrivals wait for its frames."""
        restyle = state.restyle
        taken = restyle.slots.take()
        restyle.outputs.append(taken)
        pixels = torch.from_numpy(taken.frames).to(self.models.device)[None]
        z = self.models.vae.encode_chunk(from_uint8(pixels), restyle.encode_state)
        return z.to(self.models.dtype)

    def _advance_text(self, state: WanStreamState) -> bool:
        """Apply the next transition embedding; True when a switch has just begun."""
        if not state.transition:
            return False
        state.embedding = state.transition.pop(0)
        state.text = self.models.dit.encode_text(state.embedding)
        began, state.recache_pending = state.recache_pending, False
        return began

    # -- one step --------------------------------------------------------------------------

    def step(self, state: WanStreamState) -> FrameChunk:
        """Generate and decode the next chunk of frames."""
        return self.step_async(state).result()

    def step_async(self, state: WanStreamState) -> PendingChunk:
        """Generate the next chunk and start its decode (see :meth:`decode_async`)."""
        return self.decode_async(state, self.denoise(state))

    def decode(self, state: WanStreamState, latents: torch.Tensor) -> FrameChunk:
        """Stream-decode clean latents into uint8 frames, continuing the stream's VAE cache."""
        return self.decode_async(state, latents).result()

    @torch.inference_mode()
    def decode_async(self, state: WanStreamState, latents: torch.Tensor) -> PendingChunk:
        """Start decoding ``latents``; the frames are ready when the result's ``result()`` returns.

        On CUDA the decode and the copy to host run on the pipeline's own stream, so the caller
        can launch the next chunk's DiT at once and the two overlap on the device (the decode
        waits only for the work already queued, which produced ``latents``). Every decode of a
        pipeline runs on that stream, so a stream's VAE history never changes stream and the
        allocator never hands its memory to the DiT while a decode still reads it.
        """
        start, fps, arrivals = state.frames_emitted, self.config.fps, None
        if state.restyle is not None:  # the frames of the oldest input chunk not yet out
            taken = state.restyle.outputs.popleft()
            start, arrivals = taken.first_index, taken.arrivals
        device = self.models.device
        if device.type != "cuda":
            frames = to_uint8(self.models.vae.decode_chunk(latents, state.decode_state))[0]
            state.frames_emitted += len(frames)
            return PendingChunk(frames.numpy(), start, fps, None, arrivals)
        if self._decode_stream is None:
            self._decode_stream = torch.cuda.Stream(device)
        side = self._decode_stream
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            latents.record_stream(side)
            frames = to_uint8(self.models.vae.decode_chunk(latents, state.decode_state))[0]
            host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        state.frames_emitted += len(host)
        return PendingChunk(host.numpy(), start, fps, done, arrivals)

    # -- helpers ---------------------------------------------------------------------------

    def _view(
        self,
        state: WanStreamState,
        ranges: list[TokenRange],
        context: list[str | TokenRange] | None = None,
    ) -> AttentionContext:
        return self._view_of([state.cache.cache.plan(ranges, context)])

    def _view_of(self, plans: list[SequencePlan]) -> AttentionContext:
        """One forward over ``plans``, each a sequence of its own (full attention inside)."""
        step = build_step(plans, causal=False, device=self.models.device)
        return CacheView(self.pool, step, self.models.rope, self.config.attention_backend)

    def _noise(self, state: WanStreamState, frames: int) -> torch.Tensor:
        c, h, w = state.latent_shape
        return torch.randn(
            (1, c, frames, h, w), generator=state.generator, device=self.models.device
        ).to(self.models.dtype)

    def _open(self, state: WanStreamState, x: torch.Tensor, view: AttentionContext) -> torch.Tensor:
        """x0 of a stream's first chunk ``x`` (pure noise, nothing before it) by the model's
        opening ODE (:attr:`~models.registry.WanModels.opening`).

        A DiT distilled for few steps (the published ones) maps noise to a sharp sample in one
        step; one trained by plain flow matching (the toy world's) predicts the mean there, in
        which a sprite whose place is still open is missing, and later chunks continue what
        the first shows. Later chunks need none of this: their context fixes the layout.
        """
        opening, frames = self.models.opening, x.shape[2]
        sigmas, timesteps = opening.sigmas, opening.timesteps
        for i, (sigma, t) in enumerate(zip(sigmas, timesteps, strict=True)):
            velocity = self.models.dit(x, self._timestep(t, frames), state.text, view)
            x0 = FlowSchedule.to_x0(x, velocity, sigma)
            if i + 1 < len(sigmas):
                x = FlowSchedule.ode_step(x, x0, sigma, sigmas[i + 1]).to(self.models.dtype)
        return x0

    def _timestep(self, t: float | list[float], frames: int) -> torch.Tensor:
        """``[1, frames]`` model timesteps: one value, or one per frame."""
        values = torch.as_tensor(t, dtype=torch.float32, device=self.models.device)
        return values.expand(frames).reshape(1, frames) if values.ndim == 0 else values[None]
