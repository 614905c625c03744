"""LongLive: frame-level autoregressive generation with a frame sink, a short window and
KV-recache at prompt switches, on the shared cache.

One step produces one chunk of latent frames::

    begin_chunk(3)                          window evicts its oldest frames, new slots appended
    x = noise
    for t in [1000, 937.5, 833.3, 625]:     4 denoising forwards, each rewriting the chunk's K/V
        x0 = x - sigma * dit(x, t)
        x  = (1 - sigma') * x0 + sigma' * fresh_noise          (not after the last step)
    dit(x0, t=0)                            the clean K/V the next chunks attend to
    frames = vae.decode_chunk(x0)           streamed: 9 frames for the first chunk, then 12

A prompt switch re-encodes the text (through the prompt cache), replaces the cross-attention
K/V, and recaches: one t=0 forward over the last 12 clean latent frames under the new prompt,
rewriting the window's K/V in place (the sink kept with ``global_sink``, else re-anchored).
Positions are logical and re-based, so a stream never reaches the 1024-entry RoPE limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from models.attention import AttentionContext
from models.registry import WanModels
from models.schedule import FlowSchedule
from models.vae import to_uint8
from models.wan import TextConditioning
from stream.kvcache import (
    CacheGeometry,
    CacheView,
    FrameSinkWindow,
    FrameWindowConfig,
    KVCacheManager,
    TokenRange,
    build_step,
)
from stream.pipelines.base import FrameChunk, GenerationRequest

__all__ = ["LongLiveConfig", "LongLivePipeline", "LongLiveState"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LongLiveConfig:
    """LongLive's published inference settings; every field can be overridden."""

    schedule: FlowSchedule = FlowSchedule((1000, 750, 500, 250), shift=5.0)
    chunk_frames: int = 3  # latent frames per step (12 video frames)
    sink_frames: int = 3
    window_frames: int = 9  # recent frames kept, the chunk being generated included
    recache_frames: int = 12  # clean frames recomputed under a new prompt
    global_sink: bool = True  # keep the first prompt's sink at a switch
    positions: str = "absolute"
    max_position: int = 1024
    fps: float = 16.0
    attention_backend: str | None = None  # None: Triton on CUDA, the torch twin elsewhere

    def __post_init__(self) -> None:
        if self.recache_frames < self.sink_frames + self.window_frames - self.chunk_frames:
            raise ValueError(
                f"recache_frames={self.recache_frames} must cover the retained clean frames "
                f"({self.sink_frames} sink + {self.window_frames - self.chunk_frames} window)"
            )


@dataclass(eq=False)
class LongLiveState:
    """Everything one stream owns; nothing of it lives on the shared modules."""

    cache: FrameSinkWindow
    latent_shape: tuple[int, int, int]  # (channels, h, w) of one latent frame
    generator: torch.Generator
    embedding: torch.Tensor  # [1, L, text_dim] text embedding of the current prompt
    text: TextConditioning  # cross-attention K/V of the current prompt
    decode_state: object
    prompt: str
    history: torch.Tensor | None = None  # [1, C, <= recache_frames, h, w] clean latents
    frames_emitted: int = 0
    chunks: int = 0
    transition: list[torch.Tensor] = field(default_factory=list)  # embeddings of coming chunks
    recache_pending: bool = False


class LongLivePipeline:
    """Runs LongLive streams on shared models and a shared cache pool.

    Args:
        models: the DiT, the streaming VAE and the text encoder (with its prompt cache).
        manager: the device's cache manager; a pool for the DiT's geometry is added if missing.
        cache_bytes: capacity of that pool when it is created here.
        config: LongLive settings.
        block_size: tokens per block of that pool; one latent frame at the default size when
            None (a frame per block keeps eviction exact and waste at zero).
    """

    def __init__(
        self,
        models: WanModels,
        manager: KVCacheManager,
        cache_bytes: int = 4 << 30,
        config: LongLiveConfig | None = None,
        block_size: int | None = None,
    ) -> None:
        self.models = models
        self.config = config or LongLiveConfig()
        self.manager = manager
        cfg = models.dit.config
        self.geometry = CacheGeometry(
            cfg.num_layers, cfg.num_heads, cfg.head_dim, models.dtype, str(models.device)
        )
        try:
            self.pool = manager.pool(self.geometry)
        except ValueError:
            block_size = block_size or self._tokens_per_frame()
            self.pool = manager.add_pool(self.geometry, block_size, cache_bytes)

    # -- session lifecycle -----------------------------------------------------------------

    def open(self, request: GenerationRequest) -> LongLiveState:
        """Admit a stream (raises ``CacheFullError`` when its cache does not fit)."""
        height = request.height or self.models.default_size[0]
        width = request.width or self.models.default_size[1]
        latent_shape = self.models.latent_shape(height, width)
        grid = self.models.token_grid(height, width)
        window = FrameWindowConfig(
            grid=grid,
            sink_frames=self.config.sink_frames,
            window_frames=self.config.window_frames,
            positions=self.config.positions,
            max_position=self.config.max_position,
        )
        cache = self.manager.open(self.geometry, window)
        embedding = self.models.encode_prompt(request.prompt)
        generator = torch.Generator(self.models.device).manual_seed(request.seed)
        return LongLiveState(
            cache=cache,
            latent_shape=latent_shape,
            generator=generator,
            embedding=embedding,
            text=self.models.dit.encode_text(embedding),
            decode_state=self.models.vae.new_decode_state(),
            prompt=request.prompt,
        )

    def close(self, state: LongLiveState) -> None:
        state.cache.cache.close()

    def switch_prompt(self, state: LongLiveState, prompt: str, transition_chunks: int = 0) -> None:
        """Switch at the next step; ``transition_chunks`` > 0 blends the text over that many."""
        if transition_chunks < 0:
            raise ValueError(f"transition_chunks must be >= 0, got {transition_chunks}")
        target = self.models.encode_prompt(prompt)
        start = state.embedding
        steps = max(transition_chunks, 1)
        state.transition = [torch.lerp(start, target, (i + 1) / steps) for i in range(steps)]
        state.prompt = prompt
        state.recache_pending = True

    # -- one chunk -------------------------------------------------------------------------

    def step(self, state: LongLiveState) -> FrameChunk:
        """Generate, refresh and decode the next chunk of ``chunk_frames`` latent frames."""
        return self.decode(state, self.denoise(state))

    @torch.inference_mode()
    def denoise(self, state: LongLiveState) -> torch.Tensor:
        """Generate the next chunk and write its clean K/V; returns its clean latents
        ``[1, C, chunk_frames, h, w]`` (a pending prompt switch is applied first)."""
        cfg, dit = self.config, self.models.dit
        if state.transition:
            state.embedding = state.transition.pop(0)
            state.text = dit.encode_text(state.embedding)
            if state.recache_pending:
                self._recache(state)
                state.recache_pending = False
        ranges = state.cache.begin_chunk(cfg.chunk_frames)
        view = self._view(state, ranges)
        x = self._noise(state, cfg.chunk_frames)
        sigmas, timesteps = cfg.schedule.sigmas, cfg.schedule.timesteps
        for i, (sigma, t) in enumerate(zip(sigmas, timesteps, strict=True)):
            velocity = dit(x, self._timestep(t, cfg.chunk_frames), state.text, view)
            x0 = FlowSchedule.to_x0(x, velocity, sigma)
            if i + 1 < len(sigmas):
                noise = self._noise(state, cfg.chunk_frames).float()
                x = FlowSchedule.add_noise(x0, noise, sigmas[i + 1]).to(self.models.dtype)
        clean = x0.to(self.models.dtype)
        dit(clean, self._timestep(0.0, cfg.chunk_frames), state.text, view)  # cache refresh
        state.history = self._remember(state.history, clean)
        state.chunks += 1
        return clean

    @torch.inference_mode()
    def decode(self, state: LongLiveState, latents: torch.Tensor) -> FrameChunk:
        """Stream-decode clean latents into uint8 frames, continuing the stream's VAE cache."""
        frames = to_uint8(self.models.vae.decode_chunk(latents, state.decode_state))[0]
        chunk = FrameChunk(frames.cpu().numpy(), state.frames_emitted, self.config.fps)
        state.frames_emitted += len(chunk)
        return chunk

    def _recache(self, state: LongLiveState) -> None:
        """One t=0 forward over the recent clean frames under the new prompt."""
        if state.history is None:
            return  # nothing generated yet: the new prompt simply applies from the start
        span = min(self.config.recache_frames, state.cache.frames_seen)
        ranges, discarded = state.cache.recache(span, refresh_sink=not self.config.global_sink)
        view = self._view(state, ranges, discarded)
        latents = state.history[:, :, -span:]
        self.models.dit(latents, self._timestep(0.0, span), state.text, view)

    # -- helpers ---------------------------------------------------------------------------

    def _view(
        self, state: LongLiveState, ranges: list[TokenRange], discarded: np.ndarray | None = None
    ) -> AttentionContext:
        plan = state.cache.cache.plan(ranges, discarded)
        step = build_step([plan], causal=False, device=self.models.device)
        return CacheView(self.pool, step, self.models.rope, self.config.attention_backend)

    def _noise(self, state: LongLiveState, frames: int) -> torch.Tensor:
        c, h, w = state.latent_shape
        return torch.randn(
            (1, c, frames, h, w), generator=state.generator, device=self.models.device
        ).to(self.models.dtype)

    def _timestep(self, t: float, frames: int) -> torch.Tensor:
        return torch.full((1, frames), t, device=self.models.device, dtype=torch.float32)

    def _remember(self, history: torch.Tensor | None, clean: torch.Tensor) -> torch.Tensor:
        joined = clean if history is None else torch.cat([history, clean], dim=2)
        return joined[:, :, -self.config.recache_frames :]

    def _tokens_per_frame(self) -> int:
        h, w = self.models.token_grid(*self.models.default_size)
        return h * w
