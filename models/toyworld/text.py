"""Prompts and per-second captions of toy-world clips, and the words they can use.

Grammar (every word is in :data:`VOCABULARY`)::

    prompt  := clause (" and " clause)* " on a " BACKGROUND " background"
             | "no shapes on a " BACKGROUND " background"
    clause  := ARTICLE " " COLOR " " SHAPE " " ["appears and "] motion [" and disappears"]
    motion  := "moves " DIRECTION | "bounces left and right" | "bounces up and down" | "is still"

    caption := event (" and " event)*          a second with events
             | idle (" and " idle)*            a second without, when ``idle=True``
             | ""                              nothing visible, or no events and ``idle=False``
    event   := ARTICLE " " COLOR " " SHAPE " appears"
             | "the " COLOR " " SHAPE " disappears"
             | "the " COLOR " " SHAPE " bounces at the " EDGE " edge"
    idle    := "the " COLOR " " SHAPE " " ("moves " DIRECTION | "is still")
    ARTICLE := "an" before a vowel ("an orange circle"), else "a"

A prompt describes the whole clip: a sprite "bounces" when any bounce is seen in the clip and
otherwise "moves" the way it heads on its first visible frame. Captions follow
:meth:`~models.toyworld.world.Clip.events`, so they are ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framestream.models.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    EDGES,
    SHAPES,
    Clip,
    Event,
    EventKind,
    frame_of,
    second_of,
)

__all__ = [
    "VOCABULARY",
    "Caption",
    "ParsedPrompt",
    "PromptObject",
    "captions",
    "parse_prompt",
    "prompt",
]

_GRAMMAR_WORDS = (
    "a an the and on background no shapes is still moves bounces at edge appears disappears".split()
)
# Every word any prompt or caption can contain, sorted.
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(_GRAMMAR_WORDS)
        | set(COLORS)
        | set(SHAPES)
        | set(BACKGROUNDS)
        | set(DIRECTIONS)
        | {edge for pair in EDGES for edge in pair}
    )
)


@dataclass(frozen=True)
class Caption:
    """What happens in one second of a clip.

    Attributes:
        start: first second (inclusive), a whole number.
        end: ``start + 1`` (exclusive).
        text: the commentary line; ``""`` when there is nothing to say.
    """

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class PromptObject:
    """One sprite named in a prompt.

    Attributes:
        color: one of :data:`~models.toyworld.world.COLORS`.
        shape: one of :data:`~models.toyworld.world.SHAPES`.
        transient: it appears or disappears, so some frames rightly lack it.
    """

    color: str
    shape: str
    transient: bool


@dataclass(frozen=True)
class ParsedPrompt:
    """What :func:`parse_prompt` finds in a prompt.

    Attributes:
        background: the background name, or ``None`` when the prompt names none.
        objects: the sprites, in prompt order.
    """

    background: str | None
    objects: tuple[PromptObject, ...]


def _article(color: str) -> str:
    """``"an"`` before a vowel (``"an orange circle"``), else ``"a"``."""
    return "an" if color[0] in "aeiou" else "a"


def _motion(clip: Clip, index: int, events: list[Event]) -> str:
    """The motion phrase of ``sprites[index]`` over its visible frames in ``clip``."""
    sprite = clip.sprites[index]
    if sprite.axis is None:
        return "is still"
    if any(e.sprite == index and e.kind is EventKind.BOUNCES for e in events):
        return "bounces up and down" if sprite.axis == 0 else "bounces left and right"
    first = clip.first_frame + int(np.flatnonzero(clip.visible(index))[0])
    return f"moves {sprite.heading(clip.size, first / clip.fps)}"


def prompt(clip: Clip) -> str:
    """One sentence describing ``clip``, used to condition generation (see module grammar)."""
    events = clip.events()
    clauses = []
    for index, sprite in enumerate(clip.sprites):
        if not clip.visible(index).any():
            continue
        first, end = sprite.frames(clip.fps)
        parts = ["appears"] if first > clip.first_frame else []
        parts.append(_motion(clip, index, events))
        if end < clip.end_frame:
            parts.append("disappears")
        clauses.append(
            f"{_article(sprite.color)} {sprite.color} {sprite.shape} " + " and ".join(parts)
        )
    where = f"on a {clip.background} background"
    return " and ".join(clauses) + f" {where}" if clauses else f"no shapes {where}"


def _event_text(clip: Clip, event: Event) -> str:
    sprite = clip.sprites[event.sprite]
    name = f"{sprite.color} {sprite.shape}"
    if event.kind is EventKind.APPEARS:
        return f"{_article(sprite.color)} {name} appears"
    if event.kind is EventKind.DISAPPEARS:
        return f"the {name} disappears"
    return f"the {name} bounces at the {event.edge} edge"


def _idle_text(clip: Clip, lo: int, hi: int) -> str:
    """Describe the sprites visible in absolute frames ``[lo, hi)``, as of their first one."""
    lines = []
    for sprite in clip.sprites:
        first, end = sprite.frames(clip.fps)
        shown = max(first, lo)
        if shown >= min(end, hi):
            continue
        heading = sprite.heading(clip.size, shown / clip.fps)
        motion = f"moves {heading}" if heading else "is still"
        lines.append(f"the {sprite.color} {sprite.shape} {motion}")
    return " and ".join(lines)


def captions(clip: Clip, idle: bool = True) -> list[Caption]:
    """Per-second commentary of ``clip``, one caption per second its frames touch.

    A second with events lists them in frame order ("a green square appears and the red circle
    bounces at the left edge"). A second without events describes the visible sprites when
    ``idle`` ("the red circle moves right"), else is ``""``; a second with nothing visible is
    ``""`` either way.

    Returns:
        Captions for seconds ``floor(first_frame / fps) .. floor((end_frame - 1) / fps)``.
    """
    if clip.num_frames == 0:
        return []
    events = clip.events()
    out = []
    for second in range(
        second_of(clip.first_frame, clip.fps), second_of(clip.end_frame - 1, clip.fps) + 1
    ):
        lo = max(clip.first_frame, frame_of(second, clip.fps))
        hi = min(clip.end_frame, frame_of(second + 1, clip.fps))
        lines = [_event_text(clip, e) for e in events if lo <= e.frame < hi]
        text = " and ".join(lines) if lines else _idle_text(clip, lo, hi) if idle else ""
        out.append(Caption(float(second), float(second + 1), text))
    return out


def parse_prompt(text: str) -> ParsedPrompt:
    """Read the sprites and background back out of a prompt of the module grammar.

    Lenient: words outside the grammar are skipped, so any text parses (maybe to nothing).
    """
    words = text.lower().split()
    starts = [
        i
        for i in range(len(words) - 2)
        if words[i] in ("a", "an") and words[i + 1] in COLORS and words[i + 2] in SHAPES
    ]
    objects = []
    for n, i in enumerate(starts):
        clause = words[i + 3 : starts[n + 1] if n + 1 < len(starts) else len(words)]
        transient = "appears" in clause or "disappears" in clause
        objects.append(PromptObject(words[i + 1], words[i + 2], transient))
    background = None
    for i in range(len(words) - 1):
        if words[i] in BACKGROUNDS and words[i + 1] == "background":
            background = words[i]
    return ParsedPrompt(background, tuple(objects))
