"""Questions about one second of the toy world, with answers read from its ground truth.

Four kinds, phrased as people type them in the page's Watch tab, each with a short answer in
the captions' words (so the toy tokenizer has them)::

    colour     "what colour is the circle?"              -> "the circle is red"
    shape      "what shape is the red one?"              -> "the red one is a circle"
    count      "how many shapes are there?"              -> "there are two shapes"
    direction  "which way is the red circle moving?"     -> "the red circle moves left"
                                                            / "the red circle is still"

A question is asked only when its answer holds over every frame of the second: the sprite it
names is the only one of that shape (colour) or colour (shape) on screen and shown on every
frame, no sprite comes or goes during the second (count), and the sprite does not bounce or
change heading during it (direction). :func:`answer_is_right` scores a free reply by content:
it must name the right value and no other value of the same kind.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from framestream.models.toyworld.world import COLORS, DIRECTIONS, SHAPES, Clip, EventKind

__all__ = [
    "KINDS",
    "NUMBERS",
    "Question",
    "answer_is_right",
    "ask",
    "questions",
]

KINDS = ("colour", "shape", "count", "direction")
NUMBERS = ("no", "one", "two", "three", "four", "five")  # spoken counts 0..5
_MOTIONS = (*DIRECTIONS, "still")
# the values each kind's answer may name; a right answer names exactly the true one
_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLORS),
    "shape": SHAPES,
    "count": (*NUMBERS, "zero"),
    "direction": _MOTIONS,
}
_WORDS = re.compile(r"[a-z]+")

# phrasings per kind ({shape}, {color} filled in); the first is the canonical one
PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": (
        "what colour is the {shape}?",
        "what color is the {shape}?",
        "What colour is the {shape}?",
        "which colour is the {shape}?",
    ),
    "shape": (
        "what shape is the {color} one?",
        "What shape is the {color} one?",
        "which shape is {color}?",
        "what is the {color} shape?",
    ),
    "count": (
        "how many shapes are there?",
        "How many shapes are there?",
        "how many shapes do you see?",
        "how many objects are there?",
    ),
    "direction": (
        "which way is the {color} {shape} moving?",
        "Which way is the {color} {shape} moving?",
        "where is the {color} {shape} moving?",
        "which direction is the {color} {shape} moving?",
    ),
}


@dataclass(frozen=True)
class Question:
    """One question about a second and its ground truth.

    Attributes:
        kind: one of :data:`KINDS`.
        text: the question as a user types it.
        answer: the reply the model learns (caption words only).
        truth: the value a right reply names (a colour, shape, number word or motion).
    """

    kind: str
    text: str
    answer: str
    truth: str


def _steady(clip: Clip) -> list[int]:
    """Indices of the sprites shown on every frame of ``clip``."""
    return [i for i in range(len(clip.sprites)) if clip.visible(i).all()]


def _shown(clip: Clip) -> list[int]:
    return [i for i in range(len(clip.sprites)) if clip.visible(i).any()]


def questions(clip: Clip, phrasing: int = 0) -> list[Question]:
    """Every question whose answer holds over all of ``clip`` (one second), in
    :data:`KINDS` order; ``phrasing`` indexes :data:`PHRASINGS` (modulo their number)."""
    steady, shown = _steady(clip), _shown(clip)
    sprites = clip.sprites
    out: list[Question] = []

    def phrase(kind: str, **names: str) -> str:
        options = PHRASINGS[kind]
        return options[phrasing % len(options)].format(**names)

    for i in steady:
        s = sprites[i]
        if sum(sprites[j].shape == s.shape for j in shown) == 1:
            out.append(
                Question(
                    "colour",
                    phrase("colour", shape=s.shape),
                    f"the {s.shape} is {s.color}",
                    s.color,
                )
            )
    for i in steady:
        s = sprites[i]
        if sum(sprites[j].color == s.color for j in shown) == 1:
            out.append(
                Question(
                    "shape",
                    phrase("shape", color=s.color),
                    f"the {s.color} one is a {s.shape}",
                    s.shape,
                )
            )
    if steady == shown and len(shown) < len(NUMBERS):
        n = len(shown)
        said = "there is one shape" if n == 1 else f"there are {NUMBERS[n]} shapes"
        out.append(Question("count", phrase("count"), said, NUMBERS[n]))
    bounced = {e.sprite for e in clip.events() if e.kind is EventKind.BOUNCES}
    times = clip.times
    for i in steady:
        s = sprites[i]
        if i in bounced:
            continue
        heading = {s.heading(clip.size, float(t)) for t in times}
        if len(heading) != 1:
            continue
        motion = heading.pop()
        said = f"the {s.color} {s.shape} " + (f"moves {motion}" if motion else "is still")
        out.append(
            Question(
                "direction",
                phrase("direction", color=s.color, shape=s.shape),
                said,
                motion or "still",
            )
        )
    return out


def ask(clip: Clip, rng: random.Random, kind: str | None = None) -> Question | None:
    """A random question about ``clip`` (of ``kind`` when given; a random phrasing), or None
    when there is none to ask."""
    pool = [q for q in questions(clip, rng.randrange(4)) if kind is None or q.kind == kind]
    return rng.choice(pool) if pool else None


def answer_is_right(question: Question, reply: str) -> bool:
    """Whether ``reply`` names ``question.truth`` and no other value of its kind."""
    words = _WORDS.findall(reply.lower())
    named = {w for w in words if w in _VALUES[question.kind]}
    if question.kind == "count" and "zero" in named:
        named = (named - {"zero"}) | {"no"}
    return named == {question.truth}
