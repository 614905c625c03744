"""The data both training stages read: one pool of rendered toy clips with per-chunk prompts.

:func:`render_pool` renders the clips once (a share of them switch prompt at a chunk
boundary); :func:`to_signed` gives their pixels as the codec reads them;
:func:`foreground_mask` and :func:`latent_foreground` mark the sprite pixels and latent cells
the losses weight up; :func:`encode_prompts` runs a text encoder
(:func:`~models.toyworld.embedded.toy_text_encoder`) over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from framestream.models.text import UMT5TextEncoder
from framestream.models.toyworld.generator_config import (
    FPS,
    SIZE,
    SPATIAL,
    TEMPORAL,
    TrainConfig,
)
from framestream.models.toyworld.render import render
from framestream.models.toyworld.scenarios import sample_clip, switch_clip
from framestream.models.toyworld.text import prompt

__all__ = [
    "Pool",
    "encode_prompts",
    "foreground_mask",
    "latent_foreground",
    "render_pool",
    "to_signed",
]


@dataclass
class Pool:
    """Rendered clips and what conditions each of their chunks."""

    video: torch.Tensor  # uint8 [N, T, H, W, 3]
    chunk_prompt: torch.Tensor  # int64 [N, num_chunks], index into ``prompts``
    prompts: list[str]


def _chunk_first_video_frame(chunk: int, chunk_frames: int) -> int:
    """First video frame decoded from latent chunk ``chunk`` (latent 0 gives one frame)."""
    return 0 if chunk == 0 else 1 + TEMPORAL * (chunk * chunk_frames - 1)


def render_pool(cfg: TrainConfig, n: int, rng: np.random.Generator) -> Pool:
    """Render ``n`` clips of ``cfg.video_frames`` frames; a ``switch_fraction`` of them switch
    prompt at a random chunk boundary."""
    seconds = cfg.video_frames / FPS
    video = np.empty((n, cfg.video_frames, *SIZE, 3), np.uint8)
    index: dict[str, int] = {}
    chunk_prompt = np.empty((n, cfg.num_chunks), np.int64)
    for i in range(n):
        if cfg.num_chunks > 1 and rng.random() < cfg.switch_fraction:
            at = int(rng.integers(1, cfg.num_chunks))
            frame = _chunk_first_video_frame(at, cfg.chunk_frames)
            sw = switch_clip(rng, seconds, frame / FPS, fps=FPS, size=SIZE)
            clip, texts = sw.clip, [sw.before] * at + [sw.after] * (cfg.num_chunks - at)
        else:
            clip = sample_clip(
                rng,
                seconds=seconds,
                fps=FPS,
                size=SIZE,
                max_objects=cfg.max_objects,
                transient=cfg.transient,
            )
            texts = [prompt(clip)] * cfg.num_chunks
        video[i] = render(clip)
        chunk_prompt[i] = [index.setdefault(t, len(index)) for t in texts]
    return Pool(torch.from_numpy(video), torch.from_numpy(chunk_prompt), list(index))


def to_signed(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, T, H, W]`` in ``[-1, 1]``."""
    return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def foreground_mask(video: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``[B, 1, T, H, W]`` 1.0 where a pixel differs from its frame's background (the median
    of the border pixels, as :func:`~models.toyworld.measure` reads it), else 0.0."""
    border = torch.cat(
        [video[..., 0, :], video[..., -1, :], video[..., :, 0], video[..., :, -1]], dim=-1
    )
    background = border.median(dim=-1).values[..., None, None]  # [B, 3, T, 1, 1]
    return ((video - background).abs().sum(1, keepdim=True) > threshold).float()


@torch.no_grad()
def latent_foreground(pool: Pool, device: torch.device, batch: int = 64) -> torch.Tensor:
    """bool ``[N, 1, F, h, w]``: latent cells whose pixels hold a sprite, over the frames the
    cell encodes (the first latent frame one frame, every later one four)."""
    out = []
    for i in range(0, len(pool.video), batch):
        fg = foreground_mask(to_signed(pool.video[i : i + batch]).to(device))  # [B, 1, T, H, W]
        first = F.max_pool3d(fg[:, :, :1], (1, SPATIAL, SPATIAL))
        rest = F.max_pool3d(fg[:, :, 1:], (TEMPORAL, SPATIAL, SPATIAL))
        out.append(torch.cat([first, rest], dim=2).bool())
    return torch.cat(out)


@torch.no_grad()
def encode_prompts(
    prompts: list[str], encoder: UMT5TextEncoder, device: torch.device, batch: int = 256
) -> torch.Tensor:
    """``[P, text_len, 32]``: ``encoder`` over ``prompts``."""
    encoder = encoder.to(device)
    out = [encoder.encode(prompts[i : i + batch]) for i in range(0, len(prompts), batch)]
    return torch.cat(out).float()  # [P, L, 32]
