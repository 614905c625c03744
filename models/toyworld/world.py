"""The toy world's vocabulary, its clip spec and its closed-form simulation.

Coordinates are cv2 pixel coordinates ``(y, x)``: pixel ``(i, j)`` has its centre at ``(i, j)``,
so a frame spans ``[-0.5, H - 0.5] x [-0.5, W - 0.5]``. Every shape fits the square of half-size
``half`` around its centre and bounces off an edge when that square touches it::

    -0.5      lo = half - 0.5                 hi = W - 0.5 - half       W - 0.5
      |<-half->|<-------- L = hi - lo -------->|<-half->|
      +--------*--------- centre x lives here --*--------+

Along its moving axis a centre follows a triangle wave: the unfolded travel
``p = start - lo + v (t - appear)`` is folded into ``[0, L]``; crossing ``k L`` is a bounce at
the low edge (left/top) when ``k`` is even and at the high edge (right/bottom) when ``k`` is odd.

Time is quantised to the frame grid: frame ``n`` shows time ``n / fps`` and belongs to second
``floor(n / fps)``. An event at time ``t`` is *seen* at frame ``ceil(t * fps)``, the first frame
that shows it; captions put it in that frame's second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "EDGES",
    "SHAPES",
    "Clip",
    "Event",
    "EventKind",
    "Sprite",
    "frame_of",
    "second_of",
]

# Object colours (RGB). Names never collide with BACKGROUNDS, so a prompt parses unambiguously.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "orange": (250, 140, 20),
    "purple": (160, 60, 210),
    "cyan": (40, 220, 230),
    "white": (240, 240, 240),
}
# Solid background colours (RGB), far from every object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (16, 16, 16),
    "gray": (100, 100, 100),
    "brown": (90, 60, 35),
    "silver": (170, 170, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Unit steps (dy, dx) of the four motion directions; y grows downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (0, -1),
    "right": (0, 1),
    "up": (-1, 0),
    "down": (1, 0),
}
# Edge names per axis (0 = y, 1 = x), low wall first.
EDGES: tuple[tuple[str, str], ...] = (("top", "bottom"), ("left", "right"))

_EPS = 1e-9


def frame_of(t: float, fps: float) -> int:
    """Index of the first frame at or after time ``t`` (seconds)."""
    return math.ceil(t * fps - _EPS)


def second_of(frame: int, fps: float) -> int:
    """The whole second frame ``frame`` belongs to."""
    return math.floor(frame / fps + _EPS)


@dataclass(frozen=True)
class Sprite:
    """One coloured shape and its motion.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        half: half-size in pixels; the shape fits the square ``centre +- half``.
        start: centre ``(y, x)`` in pixels at time ``appear``.
        velocity: ``(vy, vx)`` in pixels per second; at most one axis moves.
        appear: first time (seconds) it is visible; ``0`` means from the world's start.
        disappear: first time (seconds) it is gone; ``inf`` means never.
    """

    shape: str
    color: str
    half: float
    start: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    appear: float = 0.0
    disappear: float = math.inf

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {tuple(COLORS)}, got {self.color!r}")
        if self.half <= 0:
            raise ValueError(f"half must be positive, got {self.half}")
        if self.velocity[0] != 0 and self.velocity[1] != 0:
            raise ValueError(f"velocity must move along one axis, got {self.velocity}")
        if not 0 <= self.appear < self.disappear:
            raise ValueError(f"need 0 <= appear < disappear, got {self.appear}, {self.disappear}")

    @property
    def axis(self) -> int | None:
        """The moving axis (0 = y, 1 = x), or ``None`` for a still sprite."""
        if self.velocity[1] != 0:
            return 1
        return 0 if self.velocity[0] != 0 else None

    def span(self, size: tuple[int, int], axis: int) -> tuple[float, float]:
        """``(lo, hi)``: the range of the centre along ``axis`` in a frame of ``size``."""
        return self.half - 0.5, size[axis] - 0.5 - self.half

    def positions(self, size: tuple[int, int], times: np.ndarray) -> np.ndarray:
        """Centres at ``times``.

        Args:
            size: frame ``(H, W)``.
            times: ``[T]`` seconds.

        Returns:
            ``[T, 2]`` float64 centres ``(y, x)`` (also where the sprite is invisible).
        """
        out = np.empty((len(times), 2))
        for axis in (0, 1):
            lo, hi = self.span(size, axis)
            travel = self.start[axis] - lo + self.velocity[axis] * (times - self.appear)
            fold = np.mod(travel, 2 * (hi - lo))
            out[:, axis] = lo + np.where(fold <= hi - lo, fold, 2 * (hi - lo) - fold)
        return out

    def heading(self, size: tuple[int, int], t: float) -> str | None:
        """Direction name of the motion at time ``t``, or ``None`` when still."""
        axis = self.axis
        if axis is None:
            return None
        lo, hi = self.span(size, axis)
        travel = self.start[axis] - lo + self.velocity[axis] * (t - self.appear)
        leg = math.floor(travel / (hi - lo))  # even leg: unfolded and folded agree
        sign = np.sign(self.velocity[axis]) * (1 if leg % 2 == 0 else -1)
        step = (int(sign), 0) if axis == 0 else (0, int(sign))
        return next(name for name, d in DIRECTIONS.items() if d == step)

    def frames(self, fps: float) -> tuple[int, int]:
        """``[first, end)``: the frames that show this sprite (``end`` may be huge)."""
        end = frame_of(self.disappear, fps) if math.isfinite(self.disappear) else 2**62
        return frame_of(self.appear, fps), end

    def bounces(self, size: tuple[int, int], t0: float, t1: float) -> list[tuple[float, str]]:
        """Bounces strictly inside ``(max(t0, appear), min(t1, disappear))``.

        Returns:
            ``(time, edge)`` pairs in time order, ``edge`` from :data:`EDGES`.
        """
        axis = self.axis
        t0, t1 = max(t0, self.appear), min(t1, self.disappear)
        if axis is None or t0 >= t1:
            return []
        lo, hi = self.span(size, axis)
        length, v = hi - lo, self.velocity[axis]
        p0 = self.start[axis] - lo + v * (t0 - self.appear)
        p1 = self.start[axis] - lo + v * (t1 - self.appear)
        if v > 0:
            ks = range(math.floor(p0 / length) + 1, math.ceil(p1 / length))
        else:
            ks = range(math.ceil(p0 / length) - 1, math.floor(p1 / length), -1)
        base = self.start[axis] - lo
        return [(self.appear + (k * length - base) / v, EDGES[axis][k % 2]) for k in ks]


class EventKind(Enum):
    """What a caption can report."""

    APPEARS = "appears"
    DISAPPEARS = "disappears"
    BOUNCES = "bounces"


@dataclass(frozen=True)
class Event:
    """One simulated happening, seen at a frame.

    Attributes:
        frame: absolute index of the first frame that shows it.
        sprite: index into :attr:`Clip.sprites`.
        kind: what happened.
        edge: for bounces, the edge hit (``"left"``, ``"top"``, ...); else ``None``.
    """

    frame: int
    sprite: int
    kind: EventKind
    edge: str | None = None


@dataclass(frozen=True)
class Clip:
    """Sprites over a solid background, seen at ``fps`` on an absolute frame grid.

    A clip may be a window of a longer world: it shows frames
    ``first_frame .. first_frame + num_frames - 1``, at times ``n / fps``.

    Attributes:
        background: one of :data:`BACKGROUNDS`.
        sprites: drawn in order (later ones on top).
        size: frame ``(H, W)`` in pixels.
        fps: frames per second.
        num_frames: frames in the clip.
        first_frame: absolute index of the clip's first frame.
    """

    background: str
    sprites: tuple[Sprite, ...]
    size: tuple[int, int] = (64, 64)
    fps: float = 16.0
    num_frames: int = 80
    first_frame: int = 0

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(
                f"background must be one of {tuple(BACKGROUNDS)}, got {self.background!r}"
            )
        if self.fps <= 0 or self.num_frames < 0 or self.first_frame < 0:
            raise ValueError(
                f"need fps > 0, num_frames >= 0, first_frame >= 0, got "
                f"{self.fps}, {self.num_frames}, {self.first_frame}"
            )
        for i, s in enumerate(self.sprites):
            for axis in (0, 1):
                lo, hi = s.span(self.size, axis)
                if not lo - 1e-6 <= s.start[axis] <= hi + 1e-6:
                    raise ValueError(
                        f"sprites[{i}].start {s.start} leaves the {self.size} frame (half {s.half})"
                    )

    @property
    def end_frame(self) -> int:
        """One past the clip's last absolute frame index."""
        return self.first_frame + self.num_frames

    @property
    def times(self) -> np.ndarray:
        """``[T]`` seconds of the clip's frames."""
        return np.arange(self.first_frame, self.end_frame) / self.fps

    def window(self, first_frame: int, num_frames: int) -> Clip:
        """The same world seen over other absolute frames."""
        return replace(self, first_frame=first_frame, num_frames=num_frames)

    def visible(self, index: int) -> np.ndarray:
        """``[T]`` bool: which of the clip's frames show ``sprites[index]``."""
        first, end = self.sprites[index].frames(self.fps)
        n = np.arange(self.first_frame, self.end_frame)
        return (n >= first) & (n < end)

    def events(self) -> list[Event]:
        """Appearances, disappearances and bounces seen in this clip, in frame order.

        A sprite present from time 0 never "appears"; one that never leaves never "disappears";
        a bounce counts only on a frame that shows the sprite.
        """
        out: list[Event] = []
        t0, t1 = (self.first_frame - 1) / self.fps, self.end_frame / self.fps
        for i, s in enumerate(self.sprites):
            first, end = s.frames(self.fps)
            if s.appear > 0:
                out.append(Event(first, i, EventKind.APPEARS))
            if math.isfinite(s.disappear):
                out.append(Event(end, i, EventKind.DISAPPEARS))
            for t, edge in s.bounces(self.size, t0, t1):
                if frame_of(t, self.fps) < end:
                    out.append(Event(frame_of(t, self.fps), i, EventKind.BOUNCES, edge))
        out = [e for e in out if self.first_frame <= e.frame < self.end_frame]
        return sorted(out, key=lambda e: (e.frame, e.sprite))
