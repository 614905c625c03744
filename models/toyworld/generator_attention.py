"""The block-causal attention the generator trains under, in both pipelines' layouts.

LongLive's layout (:func:`clip_attention`): a clip's clean copy then its noisy copy, under the
sink/window keep-mask of :func:`frame_mask` (the picture is in
:mod:`models.toyworld.train_generator`'s docstring). Rolling Forcing's (:func:`rolling_attention`):
a clean sink and history, then a window of blocks at rising noise that sees everything before
it. :class:`ClipBatchAttention` runs one such mask over a batch of identically laid-out clips.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from framestream.kernels.rope import RopeSpec, apply_rope
from framestream.models.positions import frame_positions
from framestream.models.toyworld.generator_config import TrainConfig

__all__ = [
    "ClipBatchAttention",
    "clip_attention",
    "frame_mask",
    "rolling_attention",
    "rolling_layout",
    "token_mask",
]


def frame_mask(
    frames: np.ndarray, clean: np.ndarray, chunk: int, sink: int, window: int
) -> np.ndarray:
    """Keep-mask ``[S, S]`` between frame slots (the diagram in ``train_generator``'s docstring).

    Args:
        frames: ``[S]`` latent frame index of each slot.
        clean: ``[S]`` bool, whether the slot holds the clean (t=0) copy of its frame.
        chunk, sink, window: LongLive's chunk, sink and window sizes in latent frames.
    """
    q_chunk, k_chunk = (frames // chunk)[:, None], (frames // chunk)[None, :]
    end = (q_chunk + 1) * chunk  # one past the query chunk's last frame
    g = frames[None, :]
    in_cache = (g < sink) | (g >= end - window)
    q_clean, k_clean = clean[:, None], clean[None, :]
    sees_clean = k_clean & in_cache & np.where(q_clean, g < end, k_chunk < q_chunk)
    sees_self_noisy = ~q_clean & ~k_clean & (k_chunk == q_chunk)
    return sees_clean | sees_self_noisy


def token_mask(mask: np.ndarray, tokens_per_frame: int) -> np.ndarray:
    """Frame-slot mask -> token mask (every token of a slot shares the slot's row/column)."""
    return np.repeat(np.repeat(mask, tokens_per_frame, 0), tokens_per_frame, 1)


class ClipBatchAttention:
    """``B`` clips of identical layout: one shared keep-mask, SDPA batched over the clips.

    Equivalent to :class:`~models.attention.DenseAttention` over the packed clips with a
    block-diagonal mask, without the ``(B T)^2`` mask.

    Args:
        pos: int32 ``[T, 3]`` positions of one clip's tokens.
        mask: bool ``[T, T]`` keep-mask of one clip.
        rope: the model's rotation.
        clips: ``B``.
    """

    def __init__(self, pos: torch.Tensor, mask: torch.Tensor, rope: RopeSpec, clips: int) -> None:
        self._clip_pos = pos
        self._pos = pos.repeat(clips, 1)
        self._mask = mask
        self._rope = rope
        self._clips = clips
        # the layout with the sink where a training clip has it (a guide reads the batch in
        # it): this one, or the one a far-sink layout was moved from
        self.near = self

    def with_sink_gap(self, gap: int, sink_frames: int) -> ClipBatchAttention:
        """The same layout with every frame after the first ``sink_frames`` ``gap`` positions
        later: the sink as far behind the window as it is ``gap`` frames into a stream. Built on
        the device from a host int, so choosing a gap never syncs a step."""
        pos = self._clip_pos.clone()
        pos[:, 0] += gap * (pos[:, 0] >= sink_frames)
        far = ClipBatchAttention(pos, self._mask, self._rope, self._clips)
        far.near = self.near
        return far

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self._clips

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B*T, H, D] -> [B, H, T, D]
            return x.unflatten(0, (b, -1)).transpose(1, 2)

        # rotated in fp32, attended in the projections' dtype: under bf16 autocast the masked
        # attention is most of a step, and fp32 runs it several times slower
        qr = heads(apply_rope(q, self._pos, self._rope).to(q.dtype))
        kr = heads(apply_rope(k, self._pos, self._rope).to(q.dtype))
        out = F.scaled_dot_product_attention(qr, kr, heads(v.to(q.dtype)), attn_mask=self._mask)
        return out.transpose(1, 2).flatten(0, 1)


def clip_attention(
    cfg: TrainConfig, grid: tuple[int, int], rope: RopeSpec, clips: int, device: torch.device
) -> ClipBatchAttention:
    """The training layout: clean copy then noisy copy of ``cfg.latent_frames`` frames."""
    frames = np.concatenate([np.arange(cfg.latent_frames)] * 2)
    clean = np.arange(2 * cfg.latent_frames) < cfg.latent_frames
    mask = frame_mask(frames, clean, cfg.chunk_frames, cfg.sink_frames, cfg.window_frames)
    mask = token_mask(mask, grid[0] * grid[1])
    pos = torch.from_numpy(frame_positions(frames, grid)).to(device)
    return ClipBatchAttention(pos, torch.from_numpy(mask).to(device), rope, clips)


def rolling_layout(cfg: TrainConfig, end: int) -> tuple[list[int], list[int]]:
    """Rolling Forcing's attention for the window ending before block ``end``: clean context
    blocks (the sink, then the block before the window) and the window's blocks."""
    window = list(range(max(0, end - cfg.rolling_window), end))
    context = sorted({0, window[0] - 1} - {-1}) if window[0] > 0 else []
    return context, window


def rolling_attention(
    cfg: TrainConfig, end: int, grid: tuple[int, int], rope: RopeSpec, clips: int, device
) -> ClipBatchAttention:
    """Contiguous positions (sink, history, window), as the pipeline lays them out; clean
    blocks see the clean blocks up to themselves, window blocks see everything."""
    context, window = rolling_layout(cfg, end)
    ch = cfg.chunk_frames
    slots = len(context) + len(window)
    block = np.repeat(np.arange(slots), ch)
    clean = block < len(context)
    mask = np.where(clean[:, None], clean[None, :] & (block[None, :] <= block[:, None]), True)
    mask = token_mask(mask, grid[0] * grid[1])
    pos = torch.from_numpy(frame_positions(np.arange(slots * ch), grid)).to(device)
    return ClipBatchAttention(pos, torch.from_numpy(mask).to(device), rope, clips)
