"""Eviction policies: which tokens a session keeps, where they sit, and its worst-case size.

Each policy owns a :class:`SessionCache`, names its segments, and returns the token ranges a step
writes; the pipeline turns those into a plan (:meth:`SessionCache.plan`). Positions are logical
and re-based on the host after every change, so no policy ever copies or re-rotates a key.

::

    FrameSinkWindow (LongLive)       [sink: 3 frames][window: last 9 frames, current chunk included]
    RollingWindow (Rolling Forcing)  [sink: 1st block][history: clean][window: noisy, rewritten]
                                      each pass reads the published span, placed back to back
    StreamingVLMWindow               [system][prev head 512][prev tail 511][prev end]
                                      [round: \n|user|time|vision|query|reply] x last N
                                      (vlm_window.py: the published bookkeeping, piece by piece)
    TokenSinkWindow (StreamingLLM)   [sink: n tokens][window: last W tokens]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framestream.models.positions import frame_positions, text_positions, vision_positions
from framestream.stream.kvcache.session import SessionCache, TokenRange
from framestream.stream.kvcache.vlm_window import StreamingVLMConfig, StreamingVLMWindow

__all__ = [
    "FrameSinkWindow",
    "FrameWindowConfig",
    "RollingWindow",
    "RollingWindowConfig",
    "StreamingVLMConfig",
    "StreamingVLMWindow",
    "TokenSinkWindow",
    "TokenWindowConfig",
    "frame_positions",
    "text_positions",
    "vision_positions",
]


def _blocks_for(tokens: int, block_size: int) -> int:
    """Blocks a segment of at most ``tokens`` live tokens can span (+1 for a partial head)."""
    return -(-tokens // block_size) + 1


# --------------------------------------------------------------------------------------------
# (a) LongLive: frame sink + short window
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameWindowConfig:
    """Frame sink + sliding window over latent frames.

    Attributes:
        grid: latent tokens per frame as (rows, columns) after patching, e.g. (30, 52).
        sink_frames: first frames kept for the whole stream (LongLive: 3).
        window_frames: most recent frames kept, the chunk being generated included (LongLive: 9).
        positions: "absolute" keeps true frame indices until ``max_position``, then shifts the
            window down (the sink stays put); "contiguous" packs sink then window from 0.
        max_position: first temporal position never used (Wan's table has 1024).
    """

    grid: tuple[int, int]
    sink_frames: int = 3
    window_frames: int = 9
    positions: str = "absolute"
    max_position: int = 1024

    def __post_init__(self) -> None:
        if self.positions not in ("absolute", "contiguous"):
            raise ValueError(
                f"positions must be 'absolute' or 'contiguous', got {self.positions!r}"
            )
        if self.window_frames <= 0 or self.sink_frames < 0:
            raise ValueError(f"bad sink/window sizes {self.sink_frames}/{self.window_frames}")
        if self.max_position < self.sink_frames + self.window_frames:
            raise ValueError(f"max_position {self.max_position} is smaller than the cache")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def worst_case_blocks(self, block_size: int) -> int:
        tpf = self.tokens_per_frame
        return _blocks_for(self.sink_frames * tpf, block_size) + _blocks_for(
            self.window_frames * tpf, block_size
        )


class FrameSinkWindow:
    """LongLive's cache: the first frames as a sink, then a short window of recent frames."""

    def __init__(self, cache: SessionCache, config: FrameWindowConfig) -> None:
        self.cache, self.config = cache, config
        cache.add_segment("sink")
        cache.add_segment("window")
        self.frames_seen = 0  # absolute index of the next frame

    def sink_frames(self) -> np.ndarray:
        return self._frames("sink")

    def window_frames(self) -> np.ndarray:
        return self._frames("window")

    def begin_chunk(self, num_frames: int) -> list[TokenRange]:
        """Make room for and append the next ``num_frames`` frames; returns what to write.

        The sink fills first; later frames enter the window, evicting its oldest frames.
        The returned ranges are rewritten by every pass over the chunk (denoising steps and the
        clean t=0 refresh overwrite the same slots).
        """
        cfg, tpf = self.config, self.config.tokens_per_frame
        if num_frames > cfg.window_frames:
            raise ValueError(
                f"chunk of {num_frames} frames exceeds the window of {cfg.window_frames}"
            )
        frames = np.arange(self.frames_seen, self.frames_seen + num_frames)
        self.frames_seen += num_frames
        into_sink = min(num_frames, cfg.sink_frames - len(self.sink_frames()))
        ranges = []
        if into_sink:
            ranges.append(self.cache.append("sink", frame_positions(frames[:into_sink], cfg.grid)))
        rest = frames[into_sink:]
        if len(rest):
            overflow = len(self.window_frames()) + len(rest) - cfg.window_frames
            if overflow > 0:
                self.cache.evict_front("window", overflow * tpf)
            ranges.append(self.cache.append("window", frame_positions(rest, cfg.grid)))
        self._rebase()
        return ranges

    def recache(self, num_frames: int, refresh_sink: bool) -> list[TokenRange]:
        """Ranges a KV-recache rewrites when the caller holds the last ``num_frames`` frames.

        ``refresh_sink=False`` (LongLive's ``global_sink``): the sink keeps its K/V and the
        window is rewritten. ``refresh_sink=True``: the frames just before the window become the
        new sink, and sink and window are rewritten. Either way the written frames are the most
        recent ones, in order, so the recache forward runs over exactly those (the last
        ``written tokens / tokens_per_frame`` of the caller's frames): a frame whose K/V would
        not be kept influences nothing, so it is not computed at all::

            frames held    [ 18 19 20 | 21 22 23 24 25 26 27 28 29 ]     num_frames = 12
            global sink     sink 0 1 2 (kept)  + window 21..29 rewritten       9 frames computed
            refresh sink    sink 18 19 20      + window 21..29 rewritten      12 frames computed

        Returns:
            the non-empty ranges to write, in frame order (none before the window fills, with
            ``refresh_sink=False``: nothing to recompute).
        """
        cfg = self.config
        if refresh_sink:
            sink = len(self.sink_frames())  # the new sink is as long as the old one
            needed = sink + len(self.window_frames())
            if num_frames < needed:
                raise ValueError(
                    f"refresh_sink needs the last {needed} frames, got num_frames={num_frames}"
                )
            new_sink = np.arange(self.frames_seen - needed, self.frames_seen)[:sink]
            self.cache.set_rel_positions("sink", frame_positions(new_sink, cfg.grid))
            self._rebase()
            ranges = [self._whole("sink"), self._whole("window")]
        else:
            if num_frames < len(self.window_frames()):
                raise ValueError(
                    f"the recache rewrites the {len(self.window_frames())} window frames, "
                    f"got num_frames={num_frames}"
                )
            ranges = [self._whole("window")]
        return [r for r in ranges if len(r)]

    def _frames(self, name: str) -> np.ndarray:
        rel = self.cache.rel_positions(name)
        return rel[:: self.config.tokens_per_frame, 0]

    def _whole(self, name: str) -> TokenRange:
        return TokenRange(name, 0, self.cache.length(name))

    def _rebase(self) -> None:
        cfg = self.config
        if cfg.positions == "contiguous":
            self.cache.layout_contiguous(["sink", "window"], axes=(0,))
            return
        shift = max(0, self.frames_seen - cfg.max_position)
        sink = self.sink_frames()
        sink_shift = min(shift, int(sink.min())) if len(sink) else 0
        self.cache.set_offset("sink", (-sink_shift, 0, 0))
        self.cache.set_offset("window", (-shift, 0, 0))


# --------------------------------------------------------------------------------------------
# (b) Rolling Forcing: sink + clean history + a noisy window that is never cached
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollingWindowConfig:
    """Rolling Forcing: a window of blocks at rising noise, denoised jointly.

    Attributes:
        grid: latent tokens per frame (rows, columns).
        block_frames: latent frames per block (3).
        window_blocks: blocks in the rolling window (5, one per noise level).
        sink_blocks: leading blocks kept forever as the attention sink (1).
        attention_frames: the published attention span in frames (21,
            ``max_attention_size``): a window pass reads the sink, then the newest
            ``attention_frames - sink - window`` clean frames (3); a block's clean cache pass
            reads the newest ``attention_frames`` clean frames, itself included, the sink only
            while it is among them.
    """

    grid: tuple[int, int]
    block_frames: int = 3
    window_blocks: int = 5
    sink_blocks: int = 1
    attention_frames: int = 21

    def __post_init__(self) -> None:
        if self.recent_frames < 0:
            raise ValueError(
                f"attention_frames ({self.attention_frames}) must span the sink "
                f"({self.sink_frames} frames) and the window ({self.window_frames} frames)"
            )
        if self.attention_frames < self.block_frames:
            raise ValueError(
                f"attention_frames ({self.attention_frames}) must hold a block "
                f"({self.block_frames} frames)"
            )

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def sink_frames(self) -> int:
        return self.sink_blocks * self.block_frames

    @property
    def window_frames(self) -> int:
        return self.window_blocks * self.block_frames

    @property
    def recent_frames(self) -> int:
        """Clean frames a pass over the full window reads besides the sink."""
        return self.attention_frames - self.sink_frames - self.window_frames

    @property
    def history_frames(self) -> int:
        """Clean frames after the sink kept between steps: what the next block's cache pass
        reads besides itself (the window pass reads only their newest ``recent_frames``)."""
        return self.attention_frames - self.block_frames

    def worst_case_blocks(self, block_size: int) -> int:
        tpf = self.tokens_per_frame
        sizes = (
            self.sink_frames,
            self.history_frames + self.block_frames,  # a block lands before the oldest leaves
            self.window_frames,
        )
        return sum(_blocks_for(frames * tpf, block_size) for frames in sizes)


class RollingWindow:
    """Rolling Forcing's cache, with the published attention context of each pass::

        segments     [sink: block 0][history: <= 18 clean frames][window: 5 noisy blocks]
        window pass  sink + newest 3 history frames + window, placed back to back
        cache pass   newest 21 clean frames, the exiting block last (the sink while among them)

    Positions are re-based on the host before each pass, so the sink always sits just before
    the clean frames a window pass reads (the published "dynamic RoPE") and nothing ever grows.
    """

    def __init__(self, cache: SessionCache, config: RollingWindowConfig) -> None:
        self.cache, self.config = cache, config
        for name in ("sink", "history", "window"):
            cache.add_segment(name)
        self.frames_entered = 0  # absolute index of the next frame to enter the window

    @property
    def window_blocks(self) -> int:
        return self.cache.length("window") // (
            self.config.block_frames * self.config.tokens_per_frame
        )

    def frames(self, name: str) -> np.ndarray:
        return self.cache.rel_positions(name)[:: self.config.tokens_per_frame, 0]

    def enter_block(self) -> None:
        """A fresh noise block enters at the newest end of the window."""
        cfg = self.config
        if self.window_blocks >= cfg.window_blocks:
            raise ValueError(f"the window already holds {cfg.window_blocks} blocks")
        frames = np.arange(self.frames_entered, self.frames_entered + cfg.block_frames)
        self.frames_entered += cfg.block_frames
        self.cache.append("window", frame_positions(frames, cfg.grid))

    def window_pass(self) -> tuple[list[TokenRange], list[str | TokenRange]]:
        """Write ranges and context of the joint denoising pass over the whole window."""
        cfg = self.config
        window = self.cache.length("window")
        recent = (cfg.attention_frames - cfg.sink_frames) * cfg.tokens_per_frame - window
        context = ["sink", self._tail("history", max(recent, 0))]
        self.cache.layout_contiguous([*context, "window"], axes=(0,))
        return [TokenRange("window", 0, window)], context

    def exit_block(self) -> tuple[list[TokenRange], list[str | TokenRange]]:
        """The oldest window block is clean: move it into the sink or the history.

        Returns the range its t=0 cache pass writes and the context that pass attends to.
        """
        cfg = self.config
        tpf = cfg.tokens_per_frame
        if self.window_blocks == 0:
            raise ValueError("no block in the window to exit")
        frames = self.frames("window")[: cfg.block_frames]
        self.cache.evict_front("window", cfg.block_frames * tpf)
        if self.cache.length("sink") < cfg.sink_frames * tpf:
            written = self.cache.append("sink", frame_positions(frames, cfg.grid))
            context: list[str | TokenRange] = [TokenRange("sink", 0, written.start)]
            self.cache.layout_contiguous(["sink"], axes=(0,))
            return [written], context
        # history beyond what this pass reads leaves before the block lands
        overflow = self.cache.length("history") - cfg.history_frames * tpf
        if overflow > 0:
            self.cache.evict_front("history", overflow)
        written = self.cache.append("history", frame_positions(frames, cfg.grid))
        span = cfg.attention_frames * tpf - len(written)
        history = self._tail("history", span, stop=written.start)
        sink = self._tail("sink", span - len(history))
        context = [part for part in (sink, history) if len(part)]
        self.cache.layout_contiguous(["sink", "history"], axes=(0,))
        return [written], context

    def clean_passes(self) -> list[tuple[list[TokenRange], list[str | TokenRange]]]:
        """The cache passes of every retained clean block, oldest first, each reading the
        retained clean frames before it within the attention span: a recache rewrites them
        all in one forward (each pass's context is written by an earlier pass of the same
        forward, layer by layer)."""
        cfg = self.config
        block = cfg.block_frames * cfg.tokens_per_frame
        self.cache.layout_contiguous(["sink", "history"], axes=(0,))
        passes = []
        for name in ("sink", "history"):
            for start in range(0, self.cache.length(name), block):
                written = TokenRange(name, start, start + block)
                span = cfg.attention_frames * cfg.tokens_per_frame - block
                if name == "sink":
                    context = [TokenRange("sink", max(start - span, 0), start)]
                else:
                    history = self._tail("history", span, stop=start)
                    context = [self._tail("sink", span - len(history)), history]
                passes.append(([written], [part for part in context if len(part)]))
        return passes

    def _tail(self, name: str, tokens: int, stop: int | None = None) -> TokenRange:
        """The newest ``tokens`` (at most) of a segment, before token ``stop``."""
        stop = self.cache.length(name) if stop is None else stop
        return TokenRange(name, max(stop - max(tokens, 0), 0), stop)


# --------------------------------------------------------------------------------------------
# (d) StreamingLLM: token sink + sliding window
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenWindowConfig:
    sink_tokens: int = 4
    window_tokens: int = 1020

    def worst_case_blocks(self, block_size: int) -> int:
        return _blocks_for(self.sink_tokens, block_size) + _blocks_for(
            self.window_tokens, block_size
        )


class TokenSinkWindow:
    """StreamingLLM: the first tokens as a sink, then the most recent ones, positions contiguous."""

    def __init__(self, cache: SessionCache, config: TokenWindowConfig) -> None:
        self.cache, self.config = cache, config
        cache.add_segment("sink")
        cache.add_segment("window")
        self.tokens_seen = 0

    def append(self, count: int) -> list[TokenRange]:
        cfg = self.config
        if count > cfg.window_tokens:
            raise ValueError(f"{count} tokens exceed the window of {cfg.window_tokens}")
        ranges = []
        into_sink = min(count, cfg.sink_tokens - self.cache.length("sink"))
        if into_sink:
            ranges.append(self.cache.append("sink", text_positions(into_sink, self.tokens_seen)))
        rest = count - into_sink
        if rest:
            overflow = self.cache.length("window") + rest - cfg.window_tokens
            if overflow > 0:
                self.cache.evict_front("window", overflow)
            ranges.append(
                self.cache.append("window", text_positions(rest, self.tokens_seen + into_sink))
            )
        self.tokens_seen += count
        self.cache.layout_contiguous(["sink", "window"], axes=(0, 1, 2))
        return ranges
