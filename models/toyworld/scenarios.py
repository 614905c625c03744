"""Random clips, prompt-switch clips and an endless feed, all deterministic from their seed."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from framestream.models.toyworld.render import render
from framestream.models.toyworld.text import Caption, captions, prompt
from framestream.models.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    SHAPES,
    Clip,
    Sprite,
    frame_of,
)

__all__ = ["Feed", "Switch", "feed", "sample_clip", "switch_clip"]

_MOTIONS = ("still", *DIRECTIONS)
_HALF = (0.10, 0.16)  # half-size range, in frame heights (or widths, whichever is smaller)
_SPEED = (0.08, 0.4)  # speed range, in frame extents along the moving axis per second


def _pick(rng: np.random.Generator, names: Iterable[str]) -> str:
    """One of ``names``, uniformly."""
    names = tuple(names)
    return names[int(rng.integers(len(names)))]


def _sprite(
    rng: np.random.Generator, size: tuple[int, int], color: str, appear: float = 0.0
) -> Sprite:
    """A random sprite of ``color`` appearing at ``appear``, anywhere in the frame."""
    half = rng.uniform(*_HALF) * min(size)
    start = tuple(rng.uniform(half - 0.5, n - 0.5 - half) for n in size)
    motion = _pick(rng, _MOTIONS)
    velocity = (0.0, 0.0)
    if motion != "still":
        dy, dx = DIRECTIONS[motion]
        speed = rng.uniform(*_SPEED)
        velocity = (dy * speed * size[0], dx * speed * size[1])
    return Sprite(_pick(rng, SHAPES), color, half, start, velocity, appear)


def sample_clip(
    rng: np.random.Generator,
    *,
    seconds: float = 5.0,
    fps: float = 16.0,
    size: tuple[int, int] = (64, 64),
    max_objects: int = 1,
    transient: float = 0.0,
) -> Clip:
    """A random clip of 1..``max_objects`` sprites of distinct colours.

    Args:
        rng: the only source of randomness.
        seconds: duration; ``round(seconds * fps)`` frames.
        fps: frames per second.
        size: frame ``(H, W)``.
        max_objects: most sprites in the clip.
        transient: chance per sprite that it appears (in the first half) or disappears (in the
            second half) during the clip.
    """
    if not 1 <= max_objects <= len(COLORS):
        raise ValueError(f"max_objects must be in [1, {len(COLORS)}], got {max_objects}")
    background = _pick(rng, BACKGROUNDS)
    count = int(rng.integers(1, max_objects + 1))
    names = tuple(COLORS)
    sprites = []
    for k in rng.permutation(len(names))[:count]:
        sprite = _sprite(rng, size, names[k])
        if rng.random() < transient:
            if rng.random() < 0.5:
                sprite = replace(sprite, appear=rng.uniform(0.2, 0.5) * seconds)
            else:
                sprite = replace(sprite, disappear=rng.uniform(0.5, 0.8) * seconds)
        sprites.append(sprite)
    return Clip(background, tuple(sprites), size, fps, round(seconds * fps))


@dataclass(frozen=True)
class Switch:
    """A clip whose sprite turns into another at ``switch_frame``, with a prompt for each part.

    Attributes:
        clip: the whole clip.
        switch_frame: the first frame showing the new sprite.
        before: the prompt of frames ``[0, switch_frame)``.
        after: the prompt of frames ``[switch_frame, T)``.
    """

    clip: Clip
    switch_frame: int
    before: str
    after: str


def switch_clip(
    rng: np.random.Generator,
    seconds: float = 5.0,
    switch_at: float = 2.5,
    *,
    fps: float = 16.0,
    size: tuple[int, int] = (64, 64),
) -> Switch:
    """One sprite that, at ``switch_at`` seconds, changes colour and shape but keeps moving.

    The new sprite continues the old one's trajectory (same place, speed and heading), so only
    the prompt's words change; the switch second's caption reads "the red circle disappears and
    a blue square appears".
    """
    num_frames = round(seconds * fps)
    switch_frame = frame_of(switch_at, fps)
    if not 0 < switch_frame < num_frames:
        raise ValueError(f"switch_at must fall inside (0, {seconds}) s, got {switch_at}")
    background = _pick(rng, BACKGROUNDS)
    old = _sprite(rng, size, _pick(rng, COLORS))
    old = replace(old, disappear=switch_at)
    color = _pick(rng, [c for c in COLORS if c != old.color])
    shape = _pick(rng, [s for s in SHAPES if s != old.shape])
    start = old.positions(size, np.array([switch_at]))[0]
    heading = old.heading(size, switch_at)
    speed = math.hypot(*old.velocity)
    velocity = (0.0, 0.0) if heading is None else tuple(speed * d for d in DIRECTIONS[heading])
    new = Sprite(shape, color, old.half, tuple(start), velocity, switch_at)
    clip = Clip(background, (old, new), size, fps, num_frames)
    before = prompt(clip.window(0, switch_frame))
    after = prompt(clip.window(switch_frame, num_frames - switch_frame))
    return Switch(clip, switch_frame, before, after)


class Feed:
    """An endless world for live understanding: sprites come and go forever.

    ``slots`` independent timelines alternate a gap (0.5-4 s) and a sprite's life (2-8 s);
    slot ``j`` draws colours from ``COLORS[j::slots]``, so sprites on screen together never share
    a colour. Slot 0 starts with a sprite at time 0. Each slot has its own generator seeded by
    ``(seed, j)`` and extends lazily, so any window is the same whatever was asked before.
    """

    def __init__(
        self, seed: int, size: tuple[int, int] = (64, 64), fps: float = 16.0, slots: int = 3
    ) -> None:
        if not 1 <= slots <= len(COLORS):
            raise ValueError(f"slots must be in [1, {len(COLORS)}], got {slots}")
        self.size = size
        self.fps = fps
        self.background = _pick(np.random.default_rng(seed), BACKGROUNDS)
        self._rngs = [np.random.default_rng([seed, j]) for j in range(slots)]
        self._colors = [tuple(COLORS)[j::slots] for j in range(slots)]
        self._sprites: list[list[Sprite]] = [[] for _ in range(slots)]
        self._free = [0.0] + [float(r.uniform(0.5, 4.0)) for r in self._rngs[1:]]

    def _extend(self, until: float) -> None:
        """Generate every slot's sprites appearing before ``until`` seconds."""
        for j, rng in enumerate(self._rngs):
            while self._free[j] < until:
                sprite = _sprite(rng, self.size, _pick(rng, self._colors[j]), self._free[j])
                sprite = replace(sprite, disappear=sprite.appear + rng.uniform(2.0, 8.0))
                self._sprites[j].append(sprite)
                self._free[j] = sprite.disappear + rng.uniform(0.5, 4.0)

    def window(self, first_frame: int, num_frames: int) -> Clip:
        """The world over absolute frames ``[first_frame, first_frame + num_frames)``.

        Holds every sprite shown in, or disappearing at, one of those frames, ordered by
        appearance time.
        """
        end_frame = first_frame + num_frames
        self._extend(end_frame / self.fps)
        sprites = [
            s
            for slot in self._sprites
            for s in slot
            if s.frames(self.fps)[0] < end_frame and s.frames(self.fps)[1] >= first_frame
        ]
        sprites.sort(key=lambda s: s.appear)
        return Clip(self.background, tuple(sprites), self.size, self.fps, num_frames, first_frame)

    def second(self, second: int) -> Clip:
        """The world over the frames of one whole second."""
        first = frame_of(second, self.fps)
        return self.window(first, frame_of(second + 1, self.fps) - first)

    def caption(self, second: int) -> Caption:
        """Ground-truth commentary of one second (idle seconds are described)."""
        return captions(self.second(second))[0]

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Endless ``(timestamp in seconds, [H, W, 3] uint8 RGB frame)``, rendered per second."""
        for second in itertools.count():
            clip = self.second(second)
            for n, frame in zip(range(clip.first_frame, clip.end_frame), render(clip), strict=True):
                yield n / self.fps, frame


def feed(
    seed: int, size: tuple[int, int] = (64, 64), fps: float = 16.0
) -> Iterator[tuple[float, np.ndarray]]:
    """Endless ``(timestamp, frame)`` of ``Feed(seed, size, fps)``; its captions come from
    :meth:`Feed.caption`."""
    return Feed(seed, size, fps).frames()
