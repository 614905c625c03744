"""Rolling Forcing: a window of blocks at rising noise, denoised jointly, one clean block out per
step, with the first block as an attention sink, on the shared cache.

::

    window (oldest -> newest), 5 blocks x 3 latent frames, levels [555.6, 769.2, 882.4, 952.4, 1000]
      pass:   one forward over the 15 frames, full attention inside the window,
              keys = sink + the newest 3 clean frames + the window (never cached while noisy)
      exit:   the oldest block's x0 is final -> t=0 cache pass writes its clean K/V (into the
              sink first, then the history), reading the newest 21 clean frames, itself
              included -> streamed VAE decode -> 12 frames
      roll:   every other block is re-noised one level down; a fresh noise block enters

Each pass reads what the published loop's does (``max_attention_size`` = 21 frames), with
positions re-based on the host so the sink sits just before the clean frames a window pass
reads (the published "dynamic RoPE") and a stream never nears a RoPE table's end. At the start
the window ramps up as published: with n < 5 blocks it takes the tail of the levels, so the
first block exits after 5 passes. A step returns the next exiting block as soon as its x0 is
final: its t=0 cache pass waits for the next step (before that step's text changes), so the
first block leaves after 5 DiT passes rather than 6 and every block's decode can start while
its cache pass runs. It cannot leave sooner with the same frames: attention inside the window
is full, as published, so the first block's x0 reads every block that entered before it exits,
the fifth block's fresh noise included.

A prompt switch (the published code has none) re-encodes the text, replaces the
cross-attention K/V, and optionally recaches the retained clean blocks under the new prompt,
each reading what its own cache pass read; the blocks already in the window continue under it.
A recache rewrites every retained block, so a cache pass still waiting is then skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framestream.models.registry import WanModels
from framestream.models.schedule import FlowSchedule
from framestream.stream.kvcache import (
    KVCacheDtype,
    KVCacheManager,
    RollingWindowConfig,
    TokenRange,
    check_kv_cache_dtype,
)
from framestream.stream.pipelines.wan import WanStreamPipeline, WanStreamState
from framestream.stream.requests import GenerationRequest

__all__ = [
    "PendingCachePass",
    "RollingForcingConfig",
    "RollingForcingPipeline",
    "RollingForcingState",
]


@dataclass(frozen=True)
class RollingForcingConfig:
    """Rolling Forcing's published inference settings; every field can be overridden."""

    schedule: FlowSchedule = FlowSchedule((1000, 800, 600, 400, 200), shift=5.0)
    block_frames: int = 3
    sink_blocks: int = 1
    attention_frames: int = 21  # the published max_attention_size, in latent frames
    recache_on_switch: bool = True
    fps: float = 16.0
    attention_backend: str | None = None
    # pool rows: "auto" (the model's dtype) or "fp8_e4m3" (half of bf16's bytes, unscaled)
    kv_cache_dtype: KVCacheDtype = "auto"
    max_input_frames: int = 96  # a restyle stream's input slots waiting; more skip whole blocks

    def __post_init__(self) -> None:
        check_kv_cache_dtype(self.kv_cache_dtype)

    @property
    def window_blocks(self) -> int:
        return len(self.schedule.steps)  # one block per noise level


@dataclass(frozen=True, eq=False)
class PendingCachePass:
    """An exited block's t=0 cache pass, run before the next window pass reads its K/V."""

    block: torch.Tensor  # [1, C, block_frames, h, w] its clean latents
    write: list[TokenRange]
    context: list[str | TokenRange]


@dataclass(eq=False)
class RollingForcingState(WanStreamState):
    window: torch.Tensor | None = None  # [1, C, n * block_frames, h, w] noisy latents
    clean: torch.Tensor | None = None  # [1, C, frames, h, w] x0 of the retained clean blocks
    passes: int = 0  # window passes so far
    pending: PendingCachePass | None = None  # the last exited block's t=0 pass, not yet run


class RollingForcingPipeline(WanStreamPipeline):
    """Runs Rolling Forcing streams on shared models and a shared cache pool."""

    def __init__(
        self,
        models: WanModels,
        manager: KVCacheManager,
        cache_bytes: int = 4 << 30,
        config: RollingForcingConfig | None = None,
        block_size: int | None = None,
    ) -> None:
        self.config = config or RollingForcingConfig()
        super().__init__(models, manager, cache_bytes, block_size)
        # noise levels of the window, oldest block first (lowest noise)
        schedule = models.schedule_for(self.config.schedule)
        self._sigmas = tuple(reversed(schedule.sigmas))
        self._timesteps = tuple(reversed(schedule.timesteps))

    def _cache_config(self, grid: tuple[int, int]) -> RollingWindowConfig:
        cfg = self.config
        return RollingWindowConfig(
            grid=grid,
            block_frames=cfg.block_frames,
            window_blocks=cfg.window_blocks,
            sink_blocks=cfg.sink_blocks,
            attention_frames=cfg.attention_frames,
        )

    def _new_state(self, **fields) -> RollingForcingState:
        return RollingForcingState(**fields)

    def _passes(self) -> list[tuple[int, int]]:
        cfg = self.config
        window = cfg.window_blocks * cfg.block_frames
        # the window pass reads the attention span; the exiting block's clean pass too
        return [(window, cfg.attention_frames), (cfg.block_frames, cfg.attention_frames)]

    def _chunk_latent_frames(self) -> int:
        return self.config.block_frames

    def open(self, request: GenerationRequest) -> RollingForcingState:
        if request.restyle is not None:
            raise ValueError("Rolling Forcing does not restyle yet")
        return super().open(request)

    @torch.inference_mode()
    def denoise(self, state: RollingForcingState) -> torch.Tensor:
        """Roll the window until its oldest block exits; returns that block's clean latents."""
        while True:
            exited = self.window_step(state)
            if exited is not None:
                return exited

    @torch.inference_mode()
    def window_step(self, state: RollingForcingState) -> torch.Tensor | None:
        """One joint pass over the window; the exiting block's x0 once the window is full."""
        cfg, dit, frames = self.config, self.models.dit, self.config.block_frames
        pending, state.pending = state.pending, None
        recache = cfg.recache_on_switch and state.recache_pending  # a switch begins here
        if pending is not None and not recache:  # a recache would rewrite its K/V at once
            self._cache_pass(state, pending)  # before the text moves on: the block's own text
        if self._advance_text(state) and recache:
            self._recache(state)  # every retained block, the pending one included
        if state.cache.window_blocks < cfg.window_blocks:
            state.cache.enter_block()
            fresh = self._noise(state, frames)
            state.window = fresh if state.window is None else torch.cat([state.window, fresh], 2)
        blocks = state.cache.window_blocks
        levels = list(range(cfg.window_blocks - blocks, cfg.window_blocks))  # tail while ramping
        sigma = self._per_frame([self._sigmas[i] for i in levels])
        timestep = self._per_frame([self._timesteps[i] for i in levels])[None]
        write, context = state.cache.window_pass()
        view = self._view(state, write, context)
        if state.passes == 0 and self.models.opening is not None:  # one block, pure noise
            x0 = self._open(state, state.window, view)
        else:
            velocity = dit(state.window, timestep, state.text, view)
            x0 = FlowSchedule.to_x0(state.window, velocity, sigma[None, None, :, None, None])
        state.passes += 1
        exited = None
        if blocks == cfg.window_blocks:  # the oldest block is at the lowest level: it is done
            exited = x0[:, :, :frames].to(self.models.dtype)
            write, context = state.cache.exit_block()
            state.pending = PendingCachePass(exited, write, context)  # its clean K/V: next step
            self._keep_clean(state, exited)
            x0, levels = x0[:, :, frames:], levels[1:]
        if not levels:
            state.window = None
            return exited
        # every remaining block goes one level down, with fresh noise
        lower = self._per_frame([self._sigmas[i - 1] for i in levels])[None, None, :, None, None]
        noise = self._noise(state, x0.shape[2]).float()
        state.window = FlowSchedule.add_noise(x0, noise, lower).to(self.models.dtype)
        return exited

    def _cache_pass(self, state: RollingForcingState, pending: PendingCachePass) -> None:
        """Write an exited block's clean K/V, reading what the published cache pass reads."""
        view = self._view(state, pending.write, pending.context)
        frames = pending.block.shape[2]
        self.models.dit(pending.block, self._timestep(0.0, frames), state.text, view)

    def _keep_clean(self, state: RollingForcingState, block: torch.Tensor) -> None:
        """Keep the x0 of the clean blocks the cache retains (a recache recomputes them)."""
        cache = state.cache
        kept = (cache.cache.length("sink") + cache.cache.length("history")) // (
            cache.config.tokens_per_frame
        )
        clean = block if state.clean is None else torch.cat([state.clean, block], dim=2)
        sink = cache.config.sink_frames
        if clean.shape[2] > kept:  # the oldest history frames left the cache, never the sink
            clean = torch.cat(
                [clean[:, :, :sink], clean[:, :, clean.shape[2] - (kept - sink) :]], 2
            )
        state.clean = clean

    def _recache(self, state: RollingForcingState) -> None:
        """One t=0 forward over the retained clean blocks under the new prompt, each block a
        sequence reading what its cache pass read (written earlier in the same forward)."""
        if state.clean is None:
            return
        passes = state.cache.clean_passes()
        view = self._view_of([state.cache.cache.plan(write, context) for write, context in passes])
        frames = state.clean.shape[2]
        self.models.dit(state.clean, self._timestep(0.0, frames), state.text, view)

    def _per_frame(self, values: list[float]) -> torch.Tensor:
        """One value per latent frame of the listed blocks, ``[blocks * block_frames]``."""
        per_block = torch.tensor(values, dtype=torch.float32, device=self.models.device)
        return per_block.repeat_interleave(self.config.block_frames)
