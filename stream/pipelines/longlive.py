"""LongLive: frame-level autoregressive generation with a frame sink, a short window and
KV-recache at prompt switches, on the shared cache.

One step produces one chunk of latent frames::

    begin_chunk(3)                          window evicts its oldest frames, new slots appended
    x = noise
    for t in [1000, 937.5, 833.3, 625]:     4 denoising forwards, each rewriting the chunk's K/V
        x0 = x - sigma * dit(x, t)
        x  = (1 - sigma') * x0 + sigma' * fresh_noise          (not after the last step)
    frames = vae.decode_chunk(x0)           streamed: 9 frames for the first chunk, then 12
    dit(x0, t=0)                            the clean K/V the next chunks attend to

A restyle stream (strength s) runs the same loop on its input; the step waits for the chunk's
input slots (9 frames for the first chunk, then 12)::

    z_in = vae.encode_chunk(input frames)   streamed causal encode: 3 latent frames
    levels with sigma > s                   x0 = z_in, no DiT forward
    x = (1 - sigma) * z_in + sigma * noise  at the first level <= s, then the loop above from it
                                            (s = 1.0: x = noise, plain generation bit for bit;
                                            s under every level: x0 = z_in, no forward at all)
    frames = vae.decode_chunk(x0)           the same slots' indices; dit(x0, t=0) as above

The t=0 refresh is the first thing the *next* step does, before its switch and before its
``begin_chunk`` can evict anything: only the next chunk reads that K/V, so the chunk's frames
leave one DiT forward sooner (a new session's first frame too) and the refresh runs on the
device beside the chunk's decode. The same forwards run on the same cache in the same order,
so every frame is what the published loop computes; a step costs what it did.

A prompt switch re-encodes the text (through the prompt cache), replaces the cross-attention
K/V, and recaches: one t=0 forward under the new prompt over the clean latent frames whose K/V
the cache keeps, rewriting it in place::

    clean history   [ 18 19 20 | 21 22 23 24 25 26 27 28 29 ]     the last 12 frames
    global_sink       sink 0 1 2 kept   window 21..29 rewritten:  9 frames computed
    otherwise         sink 18 19 20   + window 21..29 rewritten: 12 frames computed (re-anchored)

Frames the cache no longer keeps are not computed: a token reaches other tokens only through
its K/V (Wan's patch embedding, norms, modulation, FFN and cross-attention are per token), so
theirs would change nothing. Full size, global sink: 14,040 query tokens, not 18,720.
Positions are logical and re-based, so a stream never reaches the 1024-entry RoPE limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framestream.models.attention import AttentionContext
from framestream.models.registry import WanModels
from framestream.models.schedule import FlowSchedule
from framestream.models.wan.model import TextConditioning
from framestream.stream.kvcache import (
    FrameWindowConfig,
    KVCacheDtype,
    KVCacheManager,
    check_kv_cache_dtype,
)
from framestream.stream.pipelines.restyle import levels_over
from framestream.stream.pipelines.wan import WanStreamPipeline, WanStreamState

__all__ = ["LongLiveConfig", "LongLivePipeline", "LongLiveState"]


@dataclass(frozen=True)
class LongLiveConfig:
    """LongLive's published inference settings; every field can be overridden."""

    schedule: FlowSchedule = FlowSchedule((1000, 750, 500, 250), shift=5.0)
    chunk_frames: int = 3  # latent frames per step (12 video frames)
    sink_frames: int = 3
    window_frames: int = 9  # recent frames kept, the chunk being generated included
    recache_frames: int = 12  # clean frames kept for a recache (those the cache keeps are redone)
    global_sink: bool = True  # keep the first prompt's sink at a switch
    positions: str = "absolute"
    max_position: int = 1024
    fps: float = 16.0
    attention_backend: str | None = None  # None: the device's default (see kernels.attention)
    # pool rows: "auto" (the model's dtype) or "fp8_e4m3" (half of bf16's bytes, unscaled)
    kv_cache_dtype: KVCacheDtype = "auto"
    max_input_frames: int = 96  # a restyle stream's input slots waiting; more skip whole chunks

    def __post_init__(self) -> None:
        check_kv_cache_dtype(self.kv_cache_dtype)
        if self.recache_frames < self.sink_frames + self.window_frames - self.chunk_frames:
            raise ValueError(
                f"recache_frames={self.recache_frames} must cover the retained clean frames "
                f"({self.sink_frames} sink + {self.window_frames - self.chunk_frames} window)"
            )


@dataclass(eq=False)
class LongLiveState(WanStreamState):
    history: torch.Tensor | None = None  # [1, C, <= recache_frames, h, w] clean latents
    # the last chunk's clean latents, its prompt's conditioning and its view: the t=0 forward
    # that writes the K/V the next chunk reads, run when the next step begins
    pending_refresh: tuple[torch.Tensor, TextConditioning, AttentionContext] | None = None


class LongLivePipeline(WanStreamPipeline):
    """Runs LongLive streams on shared models and a shared cache pool (see the base class)."""

    def __init__(
        self,
        models: WanModels,
        manager: KVCacheManager,
        cache_bytes: int = 4 << 30,
        config: LongLiveConfig | None = None,
        block_size: int | None = None,
    ) -> None:
        self.config = config or LongLiveConfig()
        super().__init__(models, manager, cache_bytes, block_size)
        self.schedule = models.schedule_for(self.config.schedule)

    def _cache_config(self, grid: tuple[int, int]) -> FrameWindowConfig:
        return FrameWindowConfig(
            grid=grid,
            sink_frames=self.config.sink_frames,
            window_frames=self.config.window_frames,
            positions=self.config.positions,
            max_position=self.config.max_position,
        )

    def _new_state(self, **fields) -> LongLiveState:
        return LongLiveState(**fields)

    def _passes(self) -> list[tuple[int, int]]:
        cfg = self.config
        context = cfg.sink_frames + cfg.window_frames
        return [(cfg.chunk_frames, context)] * (len(self.schedule.steps) + 1)  # + the refresh

    def _chunk_latent_frames(self) -> int:
        return self.config.chunk_frames

    @torch.inference_mode()
    def denoise(self, state: LongLiveState) -> torch.Tensor:
        """Generate the next chunk; returns its clean latents ``[1, C, chunk_frames, h, w]``.
        The last chunk's clean K/V is written first, then a pending prompt switch applied."""
        cfg, dit = self.config, self.models.dit
        self._refresh(state)
        if self._advance_text(state):
            self._recache(state)
        sigmas, timesteps = self.schedule.sigmas, self.schedule.timesteps
        first, x0 = 0, None
        if state.restyle is not None:  # the levels over the strength take the input as x0
            x0 = self._take_input(state)
            first = levels_over(sigmas, state.restyle.strength)
        ranges = state.cache.begin_chunk(cfg.chunk_frames)
        view = self._view(state, ranges)
        if first < len(sigmas):
            x = self._noise(state, cfg.chunk_frames)
            if first > 0:  # the input noised to the first level run
                x = FlowSchedule.add_noise(x0.float(), x.float(), sigmas[first])
                x = x.to(self.models.dtype)
        opening = state.history is None and self.models.opening is not None
        for i in range(first, len(sigmas)):
            sigma, t = sigmas[i], timesteps[i]
            if i == 0 and opening:
                x0 = self._open(state, x, view)
            else:
                velocity = dit(x, self._timestep(t, cfg.chunk_frames), state.text, view)
                x0 = FlowSchedule.to_x0(x, velocity, sigma)
            if i + 1 < len(sigmas):
                noise = self._noise(state, cfg.chunk_frames).float()
                x = FlowSchedule.add_noise(x0, noise, sigmas[i + 1]).to(self.models.dtype)
        clean = x0.to(self.models.dtype)
        state.pending_refresh = (clean, state.text, view)
        history = clean if state.history is None else torch.cat([state.history, clean], dim=2)
        state.history = history[:, :, -cfg.recache_frames :]
        return clean

    def _refresh(self, state: LongLiveState) -> None:
        """The last chunk's t=0 forward under the prompt it was made with, if not yet run."""
        if state.pending_refresh is None:
            return
        clean, text, view = state.pending_refresh
        state.pending_refresh = None
        self.models.dit(clean, self._timestep(0.0, clean.shape[2]), text, view)

    def _recache(self, state: LongLiveState) -> None:
        """One t=0 forward under the new prompt over the recent clean frames the cache keeps."""
        if state.history is None:
            return  # nothing generated yet: the new prompt simply applies from the start
        held = state.history.shape[2]
        ranges = state.cache.recache(held, refresh_sink=not self.config.global_sink)
        frames = sum(len(r) for r in ranges) // state.cache.config.tokens_per_frame
        if frames == 0:
            return  # the window is still empty: the sink keeps its K/V
        view = self._view(state, ranges)
        self.models.dit(
            state.history[:, :, -frames:], self._timestep(0.0, frames), state.text, view
        )
