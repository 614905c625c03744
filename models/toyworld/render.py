"""Draw a :class:`~models.toyworld.world.Clip` into RGB frames with OpenCV.

Shapes are anti-aliased and placed with sub-pixel precision (cv2 fixed point, 4 fractional
bits), so a mask's centroid tracks the simulated centre to a fraction of a pixel. Each shape
fills the square ``centre +- half``: the circle is inscribed, the triangle points up with its
base on the square's bottom edge, the diamond touches the middle of each side.
"""

from __future__ import annotations

import cv2
import numpy as np

from framestream.models.toyworld.world import BACKGROUNDS, COLORS, Clip

__all__ = ["render"]

_SHIFT = 4  # cv2 fixed-point fractional bits
_SCALE = 1 << _SHIFT
# Polygon corners as (x, y) multiples of ``half`` around the centre.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], np.float64),
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], np.float64),
    "diamond": np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], np.float64),
}


def _draw(img: np.ndarray, shape: str, rgb: tuple[int, int, int], y: float, x: float, half: float):
    """Fill one shape into ``img`` ``[H, W, 3]`` in place."""
    if shape == "circle":
        centre = (round(x * _SCALE), round(y * _SCALE))
        cv2.circle(img, centre, round(half * _SCALE), rgb, -1, cv2.LINE_AA, _SHIFT)
        return
    pts = np.rint((_POLYGONS[shape] * half + (x, y)) * _SCALE).astype(np.int32)
    cv2.fillConvexPoly(img, pts, rgb, cv2.LINE_AA, _SHIFT)


def render(clip: Clip) -> np.ndarray:
    """Render every frame of ``clip``.

    Returns:
        ``[T, H, W, 3]`` uint8 RGB, ``T = clip.num_frames``.
    """
    h, w = clip.size
    frames = np.empty((clip.num_frames, h, w, 3), np.uint8)
    frames[:] = BACKGROUNDS[clip.background]
    times = clip.times
    for index, sprite in enumerate(clip.sprites):
        shown = np.flatnonzero(clip.visible(index))
        if len(shown) == 0:
            continue
        centres = sprite.positions(clip.size, times[shown])
        rgb = COLORS[sprite.color]
        for i, (y, x) in zip(shown, centres.tolist(), strict=True):
            _draw(frames[i], sprite.shape, rgb, y, x, sprite.half)
    return frames
