"""Logical positions of model tokens, as the rotary embeddings read them: ``[n, 3]`` int32
(t, h, w) per token, relative to the token's segment. The cache re-bases them; the models and
the training scripts lay sequences out with the same helpers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frame_positions", "text_positions", "vision_positions"]


def frame_positions(frames: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Wan token positions ``[len(frames) * h * w, 3]``: (frame, row, column), frame-major."""
    h, w = grid
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    hw = np.stack([rows.ravel(), cols.ravel()], axis=1)
    t = np.repeat(np.asarray(frames, dtype=np.int32), h * w)[:, None]
    return np.concatenate([t, np.tile(hw, (len(frames), 1))], axis=1).astype(np.int32)


def text_positions(count: int, start: int = 0) -> np.ndarray:
    """1D positions for ``count`` text tokens, repeated on the three axes."""
    return np.repeat(np.arange(start, start + count, dtype=np.int32)[:, None], 3, axis=1)


def vision_positions(grid_thw: tuple[int, int, int], t_step: int = 1) -> np.ndarray:
    """Qwen2.5-VL M-RoPE positions of one video block after 2x2 merging, relative to its start."""
    t, h, w = grid_thw
    tt, hh, ww = np.meshgrid(np.arange(t) * t_step, np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=1).astype(np.int32)
