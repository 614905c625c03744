"""Read colour, position and shape back from pixels: ground truth for evals of any frames.

Nothing here uses the simulation, so it works on generated frames as well as rendered ones:

1. The background colour is the median of the border pixels.
2. Each pixel is explained as a blend ``bg + a (c - bg)`` of the background and a palette colour
   ``c``; the colour with the smallest residual wins, and the pixel is foreground when
   ``a >= 0.5``. Anti-aliased edges thus keep their object's colour instead of drifting to a
   neighbouring palette entry.
3. Per colour, the largest 8-connected component is the blob: its area, centroid and box.
4. Shape by template: each of the four shapes is drawn into the blob's box the way the world
   draws it, and the one with the highest intersection over union with the blob wins. A blob
   no template fits (IoU below :data:`FIT_IOU`, or a box too far from square) is
   ``"irregular"``: a ragged blob is not a diamond because its centroid is central.
5. A blob whose box touches another's may be occluded, so it lists the colours it touches;
   the adherence measures leave its shape untold only when one of them is a colour the prompt
   names (two of the prompt's sprites crossing), not for a stray blob of some other colour
   beside a lump.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from framestream.models.toyworld.text import PromptObject, parse_prompt
from framestream.models.toyworld.world import BACKGROUNDS, COLORS

__all__ = [
    "FIT_IOU",
    "IRREGULAR",
    "Blob",
    "Frames",
    "Measurement",
    "adherence",
    "background_adherence",
    "color_adherence",
    "measure",
    "shape_verdicts",
    "told_shape",
    "verdict_table",
]

_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], np.float32)  # [K, 3]
_BACKGROUNDS = np.array(list(BACKGROUNDS.values()), np.float32)  # [B, 3]
FIT_IOU = 0.7
"""Least IoU with its best template for a blob to count as that shape: clean renders fit well
above it, and lumps with a limb or a bite out of them, which a fill ratio would take for a
diamond, fall below (tests/models/test_toyworld.py holds both)."""
IRREGULAR = "irregular"
"""The shape of a blob that fits no template: never the shape a prompt asks for."""
_MAX_ASPECT = 1.3  # every shape fills a square box: a much taller or wider region is none of them
_SUPERSAMPLE = 4  # template coverage per pixel from 4x4 samples, kept where >= 0.5


@dataclass(frozen=True)
class Blob:
    """The largest connected region of one palette colour.

    Attributes:
        color: one of :data:`~models.toyworld.world.COLORS`.
        fraction: its pixels over the frame's pixels.
        centroid: ``(y, x)`` in pixels (cv2 convention: pixel ``(i, j)`` sits at ``(i, j)``).
        bbox: ``(y0, x0, y1, x1)``, end-exclusive.
        fit: IoU with the best-fitting shape template in its box (0 when not measured).
        shape: the best-fitting shape, :data:`IRREGULAR` when none fits, or ``None`` when the
            blob is too small to tell.
        touching: the colours of the blobs whose boxes overlap or adjoin this one's (any of
            them may hide part of it).
    """

    color: str
    fraction: float
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    fit: float
    shape: str | None
    touching: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """What one frame shows.

    Attributes:
        background: the nearest :data:`~models.toyworld.world.BACKGROUNDS` name.
        blobs: one per colour found, largest first.
    """

    background: str
    blobs: tuple[Blob, ...]

    @property
    def color(self) -> str | None:
        """The dominant non-background colour, or ``None`` for an empty frame."""
        return self.blobs[0].color if self.blobs else None

    @property
    def shape(self) -> str | None:
        """The dominant blob's shape guess, or ``None``."""
        return self.blobs[0].shape if self.blobs else None

    def find(self, color: str) -> Blob | None:
        """The blob of ``color``, or ``None``."""
        return next((b for b in self.blobs if b.color == color), None)


def _touch(a: Blob, b: Blob) -> bool:
    """Whether the boxes of ``a`` and ``b`` overlap or are adjacent."""
    return all(a.bbox[i] <= b.bbox[i + 2] and b.bbox[i] <= a.bbox[i + 2] for i in (0, 1))


@functools.cache
def _templates(height: int, width: int) -> dict[str, np.ndarray]:
    """Each shape as :mod:`~models.toyworld.render` fills a box of this size: ``[h, w]`` bool."""
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    ys = (np.arange(height)[:, None] + offsets).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets).reshape(-1)
    v = ((ys - (height - 1) / 2) / (height / 2))[:, None]  # -1 top .. 1 bottom
    u = ((xs - (width - 1) / 2) / (width / 2))[None, :]
    inside = {
        "circle": u**2 + v**2 <= 1,
        "square": (np.abs(u) <= 1) & (np.abs(v) <= 1),
        "triangle": np.abs(u) <= (v + 1) / 2,  # apex up, base on the bottom edge
        "diamond": np.abs(u) + np.abs(v) <= 1,
    }
    return {
        shape: mask.reshape(height, _SUPERSAMPLE, width, _SUPERSAMPLE).mean((1, 3)) >= 0.5
        for shape, mask in inside.items()
    }


def _shape(mask: np.ndarray, area: int) -> tuple[str, float]:
    """The best-fitting shape of a blob's ``[h, w]`` bool mask cut to its box (``area`` pixels),
    and its IoU."""
    height, width = mask.shape
    fits = {
        shape: (inter := int((mask & t).sum())) / (area + int(t.sum()) - inter)
        for shape, t in _templates(height, width).items()
    }
    best = max(fits, key=fits.__getitem__)
    square_enough = max(height, width) <= _MAX_ASPECT * min(height, width)
    return (best if fits[best] >= FIT_IOU and square_enough else IRREGULAR), fits[best]


def measure(frame: np.ndarray, min_fraction: float = 0.004, shape_pixels: int = 40) -> Measurement:
    """Measure one frame.

    Args:
        frame: ``[H, W, 3]`` uint8 RGB.
        min_fraction: smallest blob kept, as a fraction of the frame (at least 8 pixels).
        shape_pixels: smallest blob whose shape is guessed.

    Returns:
        The background name and the blobs found.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be [H, W, 3], got shape {frame.shape}")
    h, w, _ = frame.shape
    pixels = frame.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    bg = np.median(border, axis=0)  # [3]
    rel = (pixels - bg).reshape(-1, 3)  # [HW, 3]
    toward = _PALETTE - bg  # [K, 3]
    dot = rel @ toward.T  # [HW, K]
    norm2 = np.maximum((toward**2).sum(1), 1.0)  # [K]
    alpha = np.clip(dot / norm2, 0.0, 1.0)  # [HW, K]
    residual = (rel**2).sum(1, keepdims=True) - 2 * alpha * dot + alpha**2 * norm2
    best = residual.argmin(1)  # [HW]
    fg = alpha[np.arange(len(best)), best] >= 0.5
    labels = np.where(fg, best, -1).reshape(h, w)
    min_pixels = max(8, round(min_fraction * h * w))
    blobs = []
    for k in np.flatnonzero(np.bincount(labels[labels >= 0], minlength=len(_NAMES)) >= min_pixels):
        mask = (labels == k).astype(np.uint8)
        _, components, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        big = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
        x0, y0, bw, bh, area = (int(v) for v in stats[big])
        if area < min_pixels:
            continue
        cx, cy = (float(v) for v in centroids[big])
        shape, fit = None, 0.0
        if area >= shape_pixels:
            shape, fit = _shape(components[y0 : y0 + bh, x0 : x0 + bw] == big, area)
        blobs.append(
            Blob(_NAMES[k], area / (h * w), (cy, cx), (y0, x0, y0 + bh, x0 + bw), fit, shape)
        )
    blobs = [
        replace(b, touching=tuple(o.color for o in blobs if o is not b and _touch(b, o)))
        for b in blobs
    ]
    blobs.sort(key=lambda b: -b.fraction)
    background = tuple(BACKGROUNDS)[int(((_BACKGROUNDS - bg) ** 2).sum(1).argmin())]
    return Measurement(background, tuple(blobs))


def told_shape(blob: Blob, colors: Collection[str]) -> str | None:
    """``blob``'s shape as the adherence measures judge it against a prompt naming ``colors``:
    ``None`` when it cannot be told (too small, or touching a blob of one of ``colors``, which
    may hide part of it)."""
    return None if not set(colors).isdisjoint(blob.touching) else blob.shape


def _shows(m: Measurement, obj: PromptObject, shape: bool, colors: set[str]) -> bool:
    """Whether ``m`` holds a blob of ``obj``'s colour whose shape (when ``shape`` asks) is
    ``obj``'s or cannot be told (:func:`told_shape`)."""
    blob = m.find(obj.color)
    if blob is None or not shape:
        return blob is not None
    return told_shape(blob, colors) in (None, obj.shape)


Frames = np.ndarray | Sequence[np.ndarray | Measurement]
"""``[T, H, W, 3]`` uint8 RGB frames, or what :func:`measure` read from them: a caller that
scores the same frames several ways measures each once."""


def _measured(frame: np.ndarray | Measurement) -> Measurement:
    return frame if isinstance(frame, Measurement) else measure(frame)


def _follows(frames: Frames, text: str, shape: bool) -> float:
    if len(frames) == 0:
        raise ValueError("frames must hold at least one frame, got 0")
    parsed = parse_prompt(text)
    colors = {o.color for o in parsed.objects}
    wanted = [o for o in parsed.objects if not o.transient]
    hits = 0
    for frame in frames:
        m = _measured(frame)
        shown = all(_shows(m, o, shape, colors) for o in wanted)
        hits += shown and (m.color is None or m.color in colors)
    return hits / len(frames)


def adherence(frames: Frames, text: str) -> float:
    """Fraction of frames that show what the prompt ``text`` names.

    A frame matches when every non-transient sprite of the prompt is found in its colour with
    its shape (checked unless the blob is too small, or touches a blob of a colour the prompt
    names, which may hide part of it), and the frame's dominant colour, if any, is
    one the prompt names. A prompt naming no sprites matches only empty frames. Background and
    motion are not checked.

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB, ``T >= 1``, or their measurements (:data:`Frames`).
        text: a prompt of the :mod:`models.toyworld.text` grammar.
    """
    return _follows(frames, text, shape=True)


def color_adherence(frames: Frames, text: str) -> float:
    """:func:`adherence` without the shapes: every sprite the prompt names is there in its
    colour, and no other colour dominates (chance about 1/8 for one sprite). Shapes of 64x64
    video through a codec that rounds corners (small diamonds come back close to circles) are
    the stricter, separate question."""
    return _follows(frames, text, shape=False)


def background_adherence(frames: Frames, text: str) -> float:
    """Fraction of frames whose measured background is the one the prompt ``text`` names
    (chance: 1/4 over the four backgrounds).

    Raises:
        ValueError: no frames, or a prompt that names no background.
    """
    if len(frames) == 0:
        raise ValueError("frames must hold at least one frame, got 0")
    wanted = parse_prompt(text).background
    if wanted is None:
        raise ValueError(f"the prompt names no background: {text!r}")
    return sum(_measured(frame).background == wanted for frame in frames) / len(frames)


def shape_verdicts(frames: Frames, text: str) -> Counter:
    """How the sprites ``text`` names read, frame by frame: ``(named shape, verdict)`` counts,
    the verdict being the shape a frame drew it as (its :func:`told_shape`), ``untold`` where
    the measure leaves the shape, ``missing`` where the sprite's colour is gone. Where
    :func:`adherence` says how often a frame is right, this says what is drawn instead (a
    square rounded into a circle, a lump no template fits). :func:`verdict_table` nests them
    for a record."""
    parsed = parse_prompt(text)
    colors = {o.color for o in parsed.objects}
    counts: Counter = Counter()
    for frame in frames:
        m = _measured(frame)
        for obj in (o for o in parsed.objects if not o.transient):
            blob = m.find(obj.color)
            verdict = "missing" if blob is None else told_shape(blob, colors) or "untold"
            counts[obj.shape, verdict] += 1
    return counts


def verdict_table(counts: Counter) -> dict[str, dict[str, int]]:
    """:func:`shape_verdicts` counts as ``{named shape: {verdict: frames}}``, sorted."""
    table: dict[str, dict[str, int]] = {}
    for (shape, verdict), n in sorted(counts.items()):
        table.setdefault(shape, {})[verdict] = n
    return table
