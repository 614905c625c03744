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

A restyle stream (strength s) enters each block at the highest level at or under s, its input
noised to that level (pure noise at the top level: s = 1.0 is plain generation bit for bit); a
block whose level is over s takes its input as x0 in the joint pass (after a strength drop)::

    s = 0.6: levels [555.6]               a block enters with x = 0.444 z_in + 0.556 noise, one
                                          pass (sink + newest clean frames + it), exits: the step
                                          waits only for its own input
    s = 0.9: levels [555.6, 769.2, 882.4] a block enters at 882.4 and exits 3 passes later: a
                                          step waits for the input of the block 2 behind it
    s < 0.556                             no pass: the block's x0 is its input; cache pass only

The blocks a step enters (:meth:`RollingForcingPipeline._input_chunks`) are the input it waits
for, and the window holds only the levels at or under s, so a step reads no input from later
than those blocks.

A prompt switch (the published code has none) re-encodes the text, replaces the
cross-attention K/V, and optionally recaches the retained clean blocks under the new prompt,
each reading what its own cache pass read; the blocks already in the window continue under it.
A recache rewrites every retained block, so a cache pass still waiting is then skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from framestream.stream.pipelines.restyle import levels_over
from framestream.stream.pipelines.wan import WanStreamPipeline, WanStreamState

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
    levels: list[int] = field(default_factory=list)  # each window block's level, oldest first
    inputs: torch.Tensor | None = None  # a restyle stream's: the window blocks' encoded input
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

    def _input_chunks(self, state: RollingForcingState) -> int:
        """Blocks entering the window until the next one exits, each taking its input."""
        entry, levels, entering = self._entry_level(state), list(state.levels), 0
        while True:
            if entry >= 0 and (not levels or levels[-1] < entry):
                levels.append(entry)
                entering += 1
            if not levels:  # every level is over the strength: a block exits as it enters
                return entering + 1
            if levels[0] == 0:
                return entering
            levels = [level - 1 for level in levels]

    def _input_chunks_most(self) -> int:
        return self.config.window_blocks  # the first step at strength 1.0 fills the window

    def input_lead_frames(self, strength: float) -> int:
        """A block stays in the window a pass per level at or under ``strength`` and each pass
        takes in the next block's input: that many chunks of input are in before its frames
        leave."""
        held = len(self._sigmas) - levels_over(self._sigmas, strength)
        return max(1, held) * self.chunk_input_frames

    def _entry_level(self, state: RollingForcingState) -> int:
        """The level a block enters the window at: the top one, or for a restyle stream the
        highest at or under its strength (-1: none, the input is the block's x0)."""
        top = len(self._sigmas) - 1
        if state.restyle is None:
            return top
        return top - levels_over(self._sigmas, state.restyle.strength)

    @torch.inference_mode()
    def denoise(self, state: RollingForcingState) -> torch.Tensor:
        """Roll the window until its oldest block exits; returns that block's clean latents."""
        while True:
            exited = self.window_step(state)
            if exited is not None:
                return exited

    @torch.inference_mode()
    def window_step(self, state: RollingForcingState) -> torch.Tensor | None:
        """One joint pass over the window; the exiting block's x0 once it is at the lowest
        level (a restyle stream whose strength is under every level: at once, its input)."""
        cfg, dit, frames = self.config, self.models.dit, self.config.block_frames
        pending, state.pending = state.pending, None
        recache = cfg.recache_on_switch and state.recache_pending  # a switch begins here
        if pending is not None and not recache:  # a recache would rewrite its K/V at once
            self._cache_pass(state, pending)  # before the text moves on: the block's own text
        if self._advance_text(state) and recache:
            self._recache(state)  # every retained block, the pending one included
        entry, top = self._entry_level(state), len(self._sigmas) - 1
        if entry >= 0 and (not state.levels or state.levels[-1] < entry):
            self._enter(state, entry)
        elif not state.levels:  # every level is over the strength: the input is the x0
            state.cache.enter_block()
            exited = self._take_input(state)
            self._exit(state, exited)
            return exited
        levels = state.levels
        sigma = self._per_frame([self._sigmas[i] for i in levels])
        timestep = self._per_frame([self._timesteps[i] for i in levels])[None]
        # a restyle stream's blocks whose level is over its strength (on the host: no sync)
        over = [
            state.restyle is not None and self._sigmas[i] > state.restyle.strength for i in levels
        ]
        write, context = state.cache.window_pass()
        view = self._view(state, write, context)
        if all(over):  # no block's x0 comes from the DiT
            x0 = state.inputs.float()
        elif state.passes == 0 and levels == [top] and self.models.opening is not None:
            x0 = self._open(state, state.window, view)  # one block, pure noise
        else:
            velocity = dit(state.window, timestep, state.text, view)
            x0 = FlowSchedule.to_x0(state.window, velocity, sigma[None, None, :, None, None])
        if any(over) and not all(over):
            mask = self._per_frame([float(o) for o in over]).bool()[None, None, :, None, None]
            x0 = torch.where(mask, state.inputs.float(), x0)
        state.passes += 1
        exited = None
        if levels[0] == 0:  # the oldest block is at the lowest level: it is done
            exited = x0[:, :, :frames].to(self.models.dtype)
            self._exit(state, exited)
            x0, levels = x0[:, :, frames:], levels[1:]
            if state.inputs is not None:
                state.inputs = state.inputs[:, :, frames:]
        state.levels = [level - 1 for level in levels]
        if not levels:
            state.window, state.inputs = None, None
            return exited
        # every remaining block goes one level down, with fresh noise
        lower = self._per_frame([self._sigmas[i - 1] for i in levels])[None, None, :, None, None]
        noise = self._noise(state, x0.shape[2]).float()
        state.window = FlowSchedule.add_noise(x0, noise, lower).to(self.models.dtype)
        return exited

    def _enter(self, state: RollingForcingState, level: int) -> None:
        """A block enters the window at ``level``: fresh noise, or for a restyle stream its
        input noised to the level (pure noise at the top one, as in plain generation)."""
        state.cache.enter_block()
        fresh = self._noise(state, self.config.block_frames)
        if state.restyle is not None:
            z = self._take_input(state)
            state.inputs = z if state.inputs is None else torch.cat([state.inputs, z], 2)
            if level < len(self._sigmas) - 1:
                fresh = FlowSchedule.add_noise(z.float(), fresh.float(), self._sigmas[level])
                fresh = fresh.to(self.models.dtype)
        state.window = fresh if state.window is None else torch.cat([state.window, fresh], 2)
        state.levels.append(level)

    def _exit(self, state: RollingForcingState, block: torch.Tensor) -> None:
        """The oldest block leaves the window clean; its t=0 cache pass waits for the next
        step."""
        write, context = state.cache.exit_block()
        state.pending = PendingCachePass(block, write, context)
        self._keep_clean(state, block)

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
